//! Benchmarks of reuselb against the real kernel: `cargo xtask bench <name> [args]`, or
//! `cargo run --release -p reuselb-bench --bin bench -- <name> [args]`.
//!
//! `<name>` is one of the benches in `bench::BENCHES`, or `all`; `bench report <file>` renders
//! `bench compare`'s report and charts again from the raw samples file a run wrote. Each prints a markdown report
//! and writes it to `target/bench/<name>.md`. A missed target is reported, not an error; the
//! process exits non-zero only when a measurement fails.
use anyhow::{bail, Result};
use reuselb_bench as bench;

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
        "report" => {
            // Regenerates `bench compare`'s report and charts from a raw samples file.
            let [file, more @ ..] = rest else {
                bail!("usage: bench report <compare-raw.json.gz> [--out DIR]");
            };
            let dir = match more {
                [] => bench::target_dir().join("bench").join("report"),
                [flag, d] if flag == "--out" => std::path::PathBuf::from(d),
                _ => bail!("usage: bench report <compare-raw.json.gz> [--out DIR]"),
            };
            let report = bench::compare::render_to(std::path::Path::new(file), &dir)?;
            println!("{report}");
            let path = dir.join("compare.md");
            std::fs::write(&path, &report)?;
            eprintln!("report written to {}", path.display());
            return Ok(());
        }
        "all" => bench::names(),
        "-h" | "--help" | "help" => {
            println!("usage: bench <name> [args]\n");
            for (n, what) in bench::BENCHES {
                println!("  {n:<10} {what}");
            }
            println!("  {:<10} every bench above, one after the other", "all");
            println!("  {:<10} `report <raw.json.gz> [--out DIR]`: compare's report from its raw samples", "report");
            return Ok(());
        }
        n if bench::names().contains(&n) => {
            vec![bench::names().into_iter().find(|x| *x == n).unwrap()]
        }
        other => bail!("unknown bench `{other}`; valid: {}, all", list()),
    };
    if names == ["compare"] && rest.iter().any(|a| a == "--plan") {
        // The plan only: nothing measured, no report written.
        println!("{}", bench::compare::plan(&bench::compare::Options::parse(rest)?));
        return Ok(());
    }
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
