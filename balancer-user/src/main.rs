//! `reuselb`: the command line over the balancer-user library. One module per subcommand that
//! needs more than a few lines (`daemon`, `run`, `status`, `top`); the services, the report, the
//! metrics and HTTP are the library's.
use std::{io::Write as _, path::PathBuf};

use anyhow::Result;
use balancer_user::{
    config::Config,
    doctor::{self, Level},
    service,
};
use clap::{Parser, Subcommand};

mod daemon;
mod preflight;
mod run;
mod status;
mod top;

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
    init_logging(&cli.log_level);
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("reuselb: error: {err:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(command: Command) -> Result<i32> {
    match command {
        Command::Doctor => Ok(print_doctor()),
        Command::Run(args) => run::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::Status(args) => status::status(args),
        Command::Top(args) => top::top(args),
    }
}

/// Logs to stderr, one record per line: `LEVEL target: message`. Under systemd (JOURNAL_STREAM
/// set) each line starts with its syslog priority (`<3>` error ... `<7>` debug), which journald
/// turns into the entry's priority, and carries no timestamp (journald stamps it); elsewhere with
/// a timestamp. Colors only on a terminal. The programs' aya-log records come through the same
/// `log` stream.
fn init_logging(level: &str) {
    use env_logger::fmt::WriteStyle;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    builder.write_style(WriteStyle::Auto);
    if journald {
        builder.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{} {}: {}", record.level(), record.target(), record.args())
        });
    } else {
        builder.format(|buf, record| {
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "{} {style}{:<5}{style:#} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    builder.init();
}

/// `reuselb check-config FILE`: 0 and `FILE: OK` if it is good, 1 and the error if not.
fn check_config(file: &std::path::Path) -> i32 {
    match Config::load(file) {
        Ok(config) => {
            println!("{}: OK, {} services", file.display(), config.services.len());
            println!("{}", service::summary(&config));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Prints each check; exit status 1 if reuselb cannot run here.
fn print_doctor() -> i32 {
    let checks = doctor::run();
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("[{tag}] {}: {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("       fix: {fix}");
        }
    }
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    match worst {
        Level::Fail => {
            println!("reuselb cannot run here.");
            1
        }
        Level::Warn => {
            println!("reuselb can run here, with the limits above.");
            0
        }
        Level::Ok => {
            println!("reuselb can run here.");
            0
        }
    }
}
