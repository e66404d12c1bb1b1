//! The raw samples of a `bench compare` run: everything the report needs, and nothing computed
//! from it, written as gzip-compressed JSON (`target/bench/compare-raw.json.gz`).
//!
//! The report (tables and charts) is a function of this file alone ([`super::report::render`]):
//! a run renders its own report from the file it has just written, read back, so `bench report
//! <file>` gives the identical report. Latencies are integer microseconds, sorted per point and
//! round (their order carries no information the report uses); [`FAILED`] marks a request that
//! failed or timed out (counted as infinitely slow).
use std::{
    fs,
    io::{Read, Write},
    path::Path,
};

use anyhow::{Context, Result};
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde::{Deserialize, Serialize};

use super::capacity::Rule;

/// The latency of a request that failed or timed out.
pub const FAILED: u32 = u32::MAX;

/// Bumped when the format changes incompatibly.
///
/// 2: capacity is a throughput plateau ([`super::capacity`]): a closed-loop point is one step of a
/// search and records its clients ([`Point::clients`]), each search's result is a [`Plateau`],
/// and the options record the search's rule. Format 1 files (one closed-loop run per round, with
/// the clients of `Workload::clients`) are still read, and render as they did.
pub const FORMAT: u32 = 2;

/// The formats [`Raw::read`] accepts.
pub const READS: [u32; 2] = [1, FORMAT];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Raw {
    pub format: u32,
    pub options: RawOptions,
    pub machine: Machine,
    pub variants: Vec<RawVariant>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RawOptions {
    pub full: bool,
    pub rounds: usize,
    pub closed_secs: f64,
    pub open_secs: f64,
    pub warmup_secs: f64,
    pub min_samples: u64,
    pub levels: Vec<f64>,
    pub workloads: Vec<String>,
    /// Letters, in the order of the tables.
    pub configs: String,
    pub bootstrap: usize,
    /// The run's order is balanced (every configuration in every position equally often).
    pub balanced: bool,
    /// Each configuration's description as the code that ran it wrote it, by letter: the report
    /// prints these, so a report of an older run keeps what that run measured even after a
    /// configuration's letter is reused or its policy changes. Empty in a file from before this
    /// field: the report then takes the current code's descriptions.
    #[serde(default)]
    pub descriptions: Vec<(char, String)>,
    /// The capacity search's rule (format 2); `None` in a format 1 file.
    #[serde(default)]
    pub capacity: Option<Rule>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
    pub netns: String,
    pub git_commit: String,
    pub load_before: String,
    pub load_after: String,
    pub elapsed_secs: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RawVariant {
    pub processes: u32,
    pub threads: u32,
    /// Per round, the configuration letters in run order.
    pub orders: Vec<String>,
    /// Per workload: A's (or the base configuration's) median maximum, the base of the rates.
    pub base: Vec<(String, f64)>,
    /// Wall time of the measurements, and what processes outside the bench and the hypervisor
    /// used meanwhile (CPUs on average).
    pub secs: f64,
    pub other_cpus: f64,
    pub steal_cpus: f64,
    pub points: Vec<Point>,
    /// Each capacity search's result (format 2; empty in format 1, where a round's closed-loop
    /// point is its maximum).
    #[serde(default)]
    pub plateaus: Vec<Plateau>,
}

/// The result of one capacity search: configuration `config`'s throughput plateau on `workload`
/// in round `round`, and the clients of the step that measured it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Plateau {
    pub config: char,
    pub workload: String,
    pub round: usize,
    pub clients: usize,
    pub throughput: f64,
}

/// Closed loop (`level` 0) or open loop at `level` of the base.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub config: char,
    pub workload: String,
    /// 0 for the closed loop, else the share of the base rate.
    pub level: f64,
    /// Offered rate (open loop), req/s.
    pub rate: f64,
    pub round: usize,
    pub secs: f64,
    /// Closed loop: the clients in flight (format 2; 0 in format 1 and in open-loop points).
    #[serde(default)]
    pub clients: usize,
    /// Closed loop: ordinary requests answered within the window per second.
    pub throughput: f64,
    /// Ordinary requests' latencies (µs, sorted; [`FAILED`] = failed). Open loop only. Stored
    /// as differences from the previous value (small numbers compress well).
    #[serde(with = "deltas")]
    pub lat_us: Vec<u32>,
    pub failed: u64,
    /// Hold requests (blocked workload): their latencies (µs, sorted, [`FAILED`] = failed).
    #[serde(with = "deltas")]
    pub hold_us: Vec<u32>,
    /// Answers per worker (workers known at the start, then any other pid that answered).
    pub per_worker: Vec<u64>,
    pub c: PointCounters,
    /// A few of the failures' messages.
    pub errors: Vec<String>,
    /// The worker the workload slowed or stalled during the point (slow, stalls), and how;
    /// absent in other workloads' points and in files from before these workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impaired: Option<Impaired>,
    /// Stalls, open loop: every ordinary request at or over half a stall (the p99.9 target's
    /// bound) and every failed one, in send order; absent in other points and in files from
    /// before this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caught: Vec<Caught>,
}

/// One request a stall may have caught (see [`Point::caught`]).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Caught {
    /// Its scheduled send time, µs from the point's origin (the origin of [`Impaired::stalls_ms`]).
    pub sent_us: u64,
    /// Its latency, µs; [`FAILED`] if it failed.
    pub lat_us: u32,
    /// The worker that answered, its index in [`Point::per_worker`]; `None` if it failed.
    pub worker: Option<usize>,
}

/// What `super::impair` did to one worker process during a point, so a reader can check it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Impaired {
    pub pid: u32,
    /// Its index in [`Point::per_worker`], if it is among the workers known at the start.
    pub worker: Option<usize>,
    /// What was done to it, in words and figures (the cgroup and its quota, or the stop schedule).
    pub how: String,
    /// CPU time the process used while impaired, ms.
    pub cpu_ms: f64,
    /// Slow: CFS periods in which the quota throttled it, and the time it spent throttled (ms,
    /// summed over the CPUs it was throttled on, so it can exceed the run), from its cgroup's
    /// `cpu.stat` (`nr_throttled`, `throttled_time`).
    pub throttled_periods: u64,
    pub throttled_ms: f64,
    /// Stalls: each stop as applied, (start, length) in ms from the start of the run (the point's
    /// origin, taken just before the load generator starts).
    pub stalls_ms: Vec<(u32, u32)>,
}

/// Counter differences over one point (nanoseconds of CPU, counts).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PointCounters {
    /// Answered requests the counters are divided by.
    pub answered: u64,
    pub behind_ctxsw: u64,
    pub nginx_cpu_ns: u64,
    pub router_cpu_ns: u64,
    /// Kernel's run time (ns) and count of reuselb's program(s), if measured.
    pub bpf_ns: u64,
    pub bpf_runs: u64,
    /// Selections reuselb's least-loaded or work-left made from the fast path (an idle worker, no
    /// scan), and all its selections, if counted (0 in samples from before the fast path).
    #[serde(default)]
    pub fast_path: u64,
    #[serde(default)]
    pub selected: u64,
    /// CPU of the bench process (the load generator's thread and the bench's bookkeeping).
    pub loadgen_cpu_ns: u64,
    /// CPU of processes outside the bench during the point, in CPUs on average.
    pub other_cpus: f64,
    /// 1-minute load average at the end of the point.
    pub loadavg1: f64,
}

/// A sorted `Vec<u32>` as the differences between neighbours (the first from 0).
mod deltas {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut prev = 0u32;
        s.collect_seq(v.iter().map(|&x| {
            let d = x.wrapping_sub(prev);
            prev = x;
            d
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let diffs = Vec::<u32>::deserialize(d)?;
        let mut acc = 0u32;
        diffs
            .into_iter()
            .map(|x| {
                acc = acc.checked_add(x).ok_or_else(|| D::Error::custom("latencies not sorted"))?;
                Ok(acc)
            })
            .collect()
    }
}

impl Raw {
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_vec(self).context("encoding the raw samples")?;
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&json).context("compressing the raw samples")?;
        let bytes = gz.finish().context("compressing the raw samples")?;
        fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut json = Vec::new();
        GzDecoder::new(&bytes[..])
            .read_to_end(&mut json)
            .with_context(|| format!("{}: not a gzip file", path.display()))?;
        let raw: Raw = serde_json::from_slice(&json)
            .with_context(|| format!("{}: not a bench compare raw file", path.display()))?;
        if !READS.contains(&raw.format) {
            anyhow::bail!(
                "{}: format {} (this bench reads formats {READS:?})",
                path.display(),
                raw.format
            );
        }
        Ok(raw)
    }
}
