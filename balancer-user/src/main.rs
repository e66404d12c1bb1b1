//! `reuselb`: the command line over the balancer-user library.
use anyhow::Result;
use balancer_user::doctor::{self, Level};
use clap::{Parser, Subcommand};

mod run;

#[derive(Parser)]
#[command(name = "reuselb", version, about = "In-kernel least-busy balancing for prefork app servers (SO_REUSEPORT + eBPF)")]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
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
}

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(&cli.log_level))
        .format_timestamp_millis()
        .init();
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
