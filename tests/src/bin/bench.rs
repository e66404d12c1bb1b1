//! Benchmarks of reuselb against the real kernel: `cargo xtask bench <name> [args]`, or
//! `cargo run --release -p integration-tests --bin bench -- <name> [args]`.
//!
//! `<name>` is one of the benches in `bench::BENCHES`, or `all`. Each prints a markdown report
//! and writes it to `target/bench/<name>.md`. A missed target is reported, not an error; the
//! process exits non-zero only when a measurement fails.
use anyhow::{bail, Result};
use integration_tests::bench;

fn main() {
    // The message, not a backtrace: a failed measurement should read as one.
    if let Err(err) = run() {
        eprintln!("bench: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        bail!("usage: bench <name> [args]; benches: {}, all", list());
    };
    let rest = &args[1..];
    let names: Vec<&str> = match name.as_str() {
        "all" => bench::names(),
        "-h" | "--help" | "help" => {
            println!("usage: bench <name> [args]\n");
            for (n, what) in bench::BENCHES {
                println!("  {n:<10} {what}");
            }
            println!("  {:<10} every bench above, one after the other", "all");
            return Ok(());
        }
        n if bench::names().contains(&n) => {
            vec![bench::names().into_iter().find(|x| *x == n).unwrap()]
        }
        other => bail!("unknown bench `{other}`; valid: {}, all", list()),
    };
    for n in names {
        let report = bench::run(n, rest)?;
        println!("{report}");
        let path = bench::write_report(n, &report)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

fn list() -> String {
    bench::names().join(", ")
}
