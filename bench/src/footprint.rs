//! `bench footprint`: what reuselb's layout costs in memory and start-up time beside nginx
//! `least_conn`'s, with a real Django app (tests/apps/django_app.py).
//!
//! - reuselb (`bench compare`'s F): one uWSGI instance of N processes under `reuselb run`, every
//!   worker with its own socket on one port;
//! - nginx `least_conn` (E): N single-process uWSGI instances, one port each.
//!
//! Both behind the same single-process nginx (as `bench compare` deploys them), each with
//! `lazy-apps` true (every worker imports Django itself) and false (the master imports it, the
//! workers fork from it and share its pages). Per layout: the resident (RSS) and proportional
//! (PSS) memory summed over the app server's processes and over the balancing processes (nginx,
//! and `reuselb run` itself), read from /proc/PID/smaps_rollup once every worker has served
//! requests; and the start-up time, from the first spawn until nginx answers through the layout
//! and every uWSGI stats server lists its workers. PSS splits a shared page between the processes
//! that map it, so its sum is what the layout adds to the machine; RSS counts a shared page in
//! every process. Each round starts both layouts in turn, alternating which goes first; the
//! report gives medians with the range over the rounds.
use std::{fmt::Write as _, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{
    compare::{
        configs::{Cfg, CfgRef, Variant},
        deploy::{deploy_app, snapshot_binaries, App, Deployment},
    },
    summarize,
};
use integration_tests::apps;

/// `bench footprint`'s options.
#[derive(Debug)]
pub struct Options {
    pub processes: u32,
    pub threads: u32,
    pub rounds: usize,
}

impl Options {
    /// `[--processes N] [--threads N] [--rounds N]`; defaults 8, 20, 3 (the seed's 8 x 20).
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options { processes: 8, threads: 20, rounds: 3 };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                v.parse().with_context(|| format!("{name}: not a whole number: {v}"))
            };
            match a.as_str() {
                "--processes" => o.processes = value("--processes")? as u32,
                "--threads" => o.threads = value("--threads")? as u32,
                "--rounds" => o.rounds = value("--rounds")? as usize,
                _ => bail!(
                    "bench footprint: unknown argument `{a}` (--processes, --threads, --rounds)"
                ),
            }
        }
        if o.processes == 0 || o.threads == 0 || o.rounds == 0 {
            bail!("bench footprint: --processes, --threads and --rounds must be at least 1");
        }
        Ok(o)
    }
}

/// Memory of a set of processes, summed: (RSS, PSS) in kB, and how many processes.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss_kb: u64,
    pss_kb: u64,
    processes: usize,
}

/// `Rss:` and `Pss:` of /proc/PID/smaps_rollup, in kB.
fn smaps_rollup(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kb = line.split_whitespace().nth(1).with_context(|| format!("{path}: {line}"))?;
        kb.parse().with_context(|| format!("{path}: {line}"))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// The memory of `trees` (each pid with all its descendants) and of `alone` (without theirs).
fn memory_of(trees: &[u32], alone: &[u32]) -> Result<Memory> {
    let mut all: Vec<u32> = alone.to_vec();
    let mut level: Vec<u32> = trees.to_vec();
    while !level.is_empty() {
        all.extend(&level);
        level = level.iter().flat_map(|p| apps::children_of(*p)).collect();
    }
    all.sort_unstable();
    all.dedup();
    let mut m = Memory::default();
    for pid in all {
        let (rss, pss) = smaps_rollup(pid)?;
        m.rss_kb += rss;
        m.pss_kb += pss;
        m.processes += 1;
    }
    Ok(m)
}

/// One layout, measured once.
#[derive(Clone, Copy, Debug)]
struct Sample {
    app: Memory,
    balancer: Memory,
    startup_secs: f64,
}

/// Starts `cfg` with the Django app, lets every worker serve, measures it and stops it.
fn measure(
    cfg: CfgRef,
    v: Variant,
    app: &App,
    bins: &crate::compare::deploy::Binaries,
) -> Result<Sample> {
    let started = Instant::now();
    let dep = deploy_app(cfg, v, bins, app)?;
    let startup_secs = started.elapsed().as_secs_f64();
    // Django imports parts of itself at the first request each worker serves: serve enough that
    // every worker has answered before the memory is read.
    warm(&dep, v)?;
    let r = roots(&dep);
    Ok(Sample {
        app: memory_of(&r.app, &[])?,
        balancer: memory_of(&r.balancer_trees, &r.balancer_alone)?,
        startup_secs,
    })
}

/// Requests through nginx until every worker has answered one (bounded).
fn warm(dep: &Deployment, v: Variant) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..(200 * v.processes) {
        if let Ok(pid) = apps::one_request(dep.front, "/") {
            seen.insert(pid);
        }
        if seen.len() >= dep.workers.len() {
            return Ok(());
        }
    }
    bail!("{}: only {} of {} workers answered", dep.cfg.short(), seen.len(), dep.workers.len())
}

/// Whose processes are whose: the app server's trees, and the balancing processes (nginx's tree,
/// and `reuselb run` alone: the app it started is the app's).
struct Roots {
    app: Vec<u32>,
    balancer_trees: Vec<u32>,
    balancer_alone: Vec<u32>,
}

fn roots(dep: &Deployment) -> Roots {
    let mut r = Roots {
        app: Vec::new(),
        balancer_trees: dep.nginx.iter().map(|p| p.pid()).collect(),
        balancer_alone: Vec::new(),
    };
    for &root in &dep.roots {
        match dep.router {
            Some((pid, false)) if pid == root => {
                r.balancer_alone.push(pid);
                r.app.extend(apps::children_of(pid));
            }
            _ => r.app.push(root),
        }
    }
    r
}

/// The layouts measured: nginx `least_conn` (E) and reuselb least-loaded (F).
fn layouts() -> Result<[CfgRef; 2]> {
    let e = Cfg::by_letter('E').context("configuration E")?;
    let f = Cfg::by_letter('F').context("configuration F")?;
    Ok([f, e])
}

/// Runs the bench; returns its markdown report.
pub fn run(o: &Options) -> Result<String> {
    apps::require("uwsgi");
    apps::require("nginx");
    let netns = crate::choose_netns(false);
    let bins = snapshot_binaries()?;
    let v = Variant { processes: o.processes, threads: o.threads };
    let django = apps::apps_dir().join("django_app.py");
    let layouts = layouts()?;
    let mut rows = Vec::new();
    for lazy in [true, false] {
        let app = App { file: django.clone(), lazy };
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for round in 0..o.rounds {
            // Alternate which layout starts first, so a drift of the machine does not favour one.
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                eprintln!(
                    "bench footprint: lazy-apps {lazy}, round {}, {}",
                    round + 1,
                    layouts[i].short()
                );
                samples[i].push(measure(layouts[i], v, &app, &bins)?);
            }
        }
        for (cfg, s) in layouts.iter().zip(&samples) {
            rows.push((lazy, *cfg, s.clone()));
        }
    }
    Ok(render(o, &netns, &rows))
}

/// Median [min, max] of `f` over the samples, formatted with `digits` decimals.
fn stat(samples: &[Sample], digits: usize, f: impl Fn(&Sample) -> f64) -> String {
    let s = summarize(&samples.iter().map(f).collect::<Vec<_>>());
    format!("{:.digits$} [{:.digits$}, {:.digits$}]", s.median, s.min, s.max)
}

fn render(o: &Options, netns: &str, rows: &[(bool, CfgRef, Vec<Sample>)]) -> String {
    let mib = |kb: u64| kb as f64 / 1024.0;
    let mut w = String::new();
    let _ = writeln!(
        w,
        "# bench footprint\n\n{} x {} (processes x threads), the Django app of tests/apps/django_app.py, \
         {} rounds, in {netns}; median [min, max] over the rounds. App: the uWSGI processes (masters and \
         workers); balancer: nginx (both layouts) and `reuselb run` itself (reuselb's).\n",
        o.processes, o.threads, o.rounds
    );
    let _ = writeln!(
        w,
        "| lazy-apps | layout | app processes | app RSS MiB | app PSS MiB | balancer processes | balancer RSS MiB | balancer PSS MiB | start-up s |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (lazy, cfg, s) in rows {
        let _ = writeln!(
            w,
            "| {lazy} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cfg.short(),
            s[0].app.processes,
            stat(s, 0, |x| mib(x.app.rss_kb)),
            stat(s, 0, |x| mib(x.app.pss_kb)),
            s[0].balancer.processes,
            stat(s, 1, |x| mib(x.balancer.rss_kb)),
            stat(s, 1, |x| mib(x.balancer.pss_kb)),
            stat(s, 2, |x| x.startup_secs),
        );
    }
    w
}

#[cfg(test)]
mod tests {
    use super::Options;

    #[test]
    fn options_parse_and_refuse_what_they_do_not_know() {
        let o = Options::parse(&["--processes".into(), "4".into()]).unwrap();
        assert_eq!((o.processes, o.threads, o.rounds), (4, 20, 3));
        let e = Options::parse(&["--procs".into(), "4".into()]).unwrap_err().to_string();
        assert!(e.contains("--procs"), "{e}");
        assert!(Options::parse(&["--rounds".into(), "0".into()]).is_err());
        assert!(Options::parse(&["--threads".into(), "x".into()]).is_err());
    }
}
