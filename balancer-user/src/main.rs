//! `reuselb`: parses the command line and hands it to its subcommand in [`cli`] (one module
//! each); the exit status is the subcommand's, or 1 with the error on stderr.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

use cli::{check_config, daemon, doctor, logging, run, status, top};

#[derive(Parser)]
#[command(
    name = "reuselb",
    version,
    about = "In-kernel least-busy balancing for prefork app servers (SO_REUSEPORT + eBPF)"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG, when set, overrides it (and may
    /// set levels per module: RUST_LOG=info,balancer_user::registry=debug).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this kernel and this process can run reuselb, and say how to fix what is missing.
    Doctor,
    /// Run an app server (uWSGI, gunicorn, ...) with its workers balanced: the controller runs
    /// in-process, COMMAND starts with the reuselb shim preloaded.
    Run(run::RunArgs),
    /// Balance every service of a config file; SIGHUP reloads it, SIGTERM stops the daemon and
    /// leaves the services serving (a daemon started again adopts them).
    Daemon(daemon::DaemonArgs),
    /// Parse and check a config file without running it: prints OK, or the error as
    /// FILE:LINE:COLUMN: message (exit status 1).
    CheckConfig {
        /// The YAML config file.
        file: PathBuf,
    },
    /// Print the per-worker tables of a running daemon or `reuselb run` (from its /status).
    Status(status::StatusArgs),
    /// Live per-worker view of a running daemon or `reuselb run`, redrawn every interval; q or
    /// Ctrl-C quits; exits (status 1) when the daemon goes away.
    Top(top::TopArgs),
}

fn main() {
    let cli = Cli::parse();
    logging::init(&cli.log_level);
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("reuselb: error: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(command: Command) -> Result<i32> {
    match command {
        Command::Doctor => Ok(doctor::doctor()),
        Command::Run(args) => run::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::CheckConfig { file } => Ok(check_config::check_config(&file)),
        Command::Status(args) => status::status(args),
        Command::Top(args) => top::top(args),
    }
}
