//! `cargo xtask`: the project's own commands, so that a fresh machine (or CI) needs nothing but
//! `cargo xtask test`. Every task runs `setup` first, which only installs what is missing.

mod bench;
mod build;
mod command;
mod fuzz;
mod image;
mod lint;
mod privilege;
mod prove;
mod run;
mod setup;
mod soak;
mod test;
mod workspace;

use std::process::ExitCode;

use balancer_common::broken::Broken;
use clap::{Parser, Subcommand};

use crate::workspace::Workspace;

#[derive(Parser)]
#[command(about = "Set up, build, test, run and benchmark reuselb")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the toolchain, bpf-linker, Debian packages and bpffs; install only what is missing.
    Setup,
    /// Build reuselb and libbalancer_shim.so (release), eBPF programs included.
    Build {
        /// Set up only the toolchain (nightly rust-src, bpf-linker), not the test packages or
        /// bpffs: for a container image's build stage.
        #[arg(long)]
        toolchain_only: bool,
    },
    /// Build, then the container image (deploy/container/Containerfile) with podman, FROM
    /// scratch: no base image is pulled.
    Image {
        /// The image's name and tag.
        #[arg(long, default_value = "localhost/reuselb:latest")]
        tag: String,
    },
    /// Check formatting (rustfmt) and lints (clippy, warnings as errors), as `test` does first.
    Lint,
    /// Lint, build, then run every test of the workspace (as root), then each fuzz target briefly.
    Test {
        /// Extra arguments for `cargo test` (use a second `--` for the test binaries).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Prove the claim tests (docs/CLAIMS.md): each passes on the good build, then fails on the
    /// deliberately broken build it names, for its own reason (one build with the feature
    /// `broken`, in a target directory of its own; `cargo xtask test` runs this too).
    Prove {
        /// Which broken build (repeatable): sk-pass, ignore-load, no-count, no-answers,
        /// no-reconcile, no-idle-refresh; all if omitted.
        #[arg(long, value_parser = parse_broken)]
        broken: Vec<Broken>,
    },
    /// Build, then the demo: uWSGI (8 processes x 20 threads) balanced by reuselb under a
    /// bounded wrk load, with reuselb's live per-worker view.
    Run(run::DemoArgs),
    /// Build, then soak: steady load with worker churn and kills and a daemon restart (bounded).
    Soak {
        /// How long, in minutes (every `cargo xtask test` runs two).
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Build, then run the benchmarks.
    Bench {
        /// Which benchmark to run.
        #[arg(default_value = "all")]
        what: String,
        /// Extra arguments for the bench binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets of fuzz/ (protocol, config, policy) for a bounded time each.
    Fuzz {
        /// One target; all of them if omitted.
        target: Option<String>,
        /// How long to fuzz each target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

/// A broken build's name (`balancer_common::broken`), for `prove --broken`.
fn parse_broken(name: &str) -> Result<Broken, String> {
    Broken::from_name(name).ok_or_else(|| {
        let known: Vec<_> = Broken::ALL.iter().map(|b| b.name()).collect();
        format!("no broken build called `{name}` (known: {})", known.join(", "))
    })
}

/// Prints an error as one line with its causes (not anyhow's Debug form with a backtrace).
fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let ws = Workspace::locate();
    match cli.task {
        Task::Setup => setup::run(&ws),
        Task::Build { toolchain_only: false } => build::run(&ws).map(drop),
        Task::Build { toolchain_only: true } => build::toolchain_only(&ws).map(drop),
        Task::Image { tag } => image::run(&ws, &tag),
        Task::Lint => lint::run(&ws),
        Task::Test { cargo_args } => test::run(&ws, &cargo_args),
        Task::Prove { broken } => {
            anyhow::ensure!(
                privilege::is_root()?,
                "the claim tests load BPF programs and create network namespaces: run as root"
            );
            setup::run(&ws)?;
            prove::run(&ws, &broken, None)
        }
        Task::Run(args) => run::run(&ws, &args),
        Task::Bench { what, args } => bench::run(&ws, &what, &args),
        Task::Fuzz { target, seconds } => fuzz::run(&ws, target.as_deref(), seconds),
        Task::Soak { minutes } => soak::run(&ws, minutes),
    }
}
