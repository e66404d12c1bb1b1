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
    /// Prove the claim tests: build deliberately broken variants (programs that return SK_PASS, a
    /// shim that counts nothing) in target directories of their own, run the claim tests against
    /// each and list which tests failed. Fails if a claim test did not catch its broken build.
    Prove {
        /// Which broken build (repeatable); both if omitted.
        #[arg(long, value_enum)]
        broken: Vec<prove::Broken>,
        /// Modules of the integration binary to run (repeatable), e.g. `--module selector`; the
        /// modules of the claim tests if omitted.
        #[arg(long = "module")]
        tests: Vec<String>,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
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
        Task::Prove { broken, tests, test_args } => {
            anyhow::ensure!(
                privilege::is_root()?,
                "the claim tests load BPF programs and create network namespaces: run as root"
            );
            build::run(&ws)?;
            prove::run(&ws, &broken, &tests, &test_args)
        }
        Task::Run(args) => run::run(&ws, &args),
        Task::Bench { what, args } => bench::run(&ws, &what, &args),
        Task::Fuzz { target, seconds } => fuzz::run(&ws, target.as_deref(), seconds),
        Task::Soak { minutes } => soak::run(&ws, minutes),
    }
}
