//! Counters of `bench compare` from /proc and the kernel: context switches and CPU of the
//! processes behind nginx, nginx's and the router's CPU, the BPF run-time statistics of reuselb's
//! program, the bench's own CPU, what other processes used, and the machine's description.
use std::fs;

use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use balancer_common::{maps, Event, MAX_SLOTS};

use crate::kernel_release;
use integration_tests::apps;

use super::deploy::Deployment;

pub fn descendants(root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        for c in apps::children_of(out[i]) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// Context switches (voluntary + not) and CPU time (ns) of every thread of `pid`.
pub fn process_totals(pid: u32) -> (u64, u64) {
    let mut ctx = 0;
    let mut cpu = 0;
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return (0, 0) };
    for t in tasks.flatten() {
        let p = t.path();
        if let Ok(status) = fs::read_to_string(p.join("status")) {
            for line in status.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    ctx += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        if let Ok(s) = fs::read_to_string(p.join("schedstat")) {
            cpu += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (ctx, cpu)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Every process behind nginx: app servers, fastrouter, `reuselb run`.
    pub behind_ctxsw: u64,
    pub nginx_cpu_ns: u64,
    pub router_cpu_ns: u64,
}

impl Deployment {
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        let mut pids: Vec<u32> = Vec::new();
        for r in &self.roots {
            pids.extend(descendants(*r));
        }
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            c.behind_ctxsw += process_totals(pid).0;
        }
        if let Some(n) = &self.nginx {
            c.nginx_cpu_ns = process_totals(n.pid()).1;
        }
        if let Some((pid, tree)) = self.router {
            let pids = if tree { descendants(pid) } else { vec![pid] };
            c.router_cpu_ns = pids.iter().map(|p| process_totals(*p).1).sum();
        }
        c
    }

    /// Ids of the BPF programs `reuselb run` holds (from its descriptors' fdinfo).
    pub fn prog_ids(&self) -> Vec<u32> {
        let Some((pid, false)) = self.router else { return Vec::new() };
        let mut ids = Vec::new();
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return ids };
        for fd in fds.flatten() {
            let is_prog = fs::read_link(fd.path())
                .map(|l| l.to_string_lossy().contains("bpf-prog"))
                .unwrap_or(false);
            if !is_prog {
                continue;
            }
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

/// (selections the fast path made, selections) of the group behind the programs `ids`, summed over
/// the CPUs: the `EVENTS` counter [`Event::FastPath`] and the `SELECTED` counters of every slot,
/// read through the programs' own map ids. `None` if neither map can be read.
pub fn fast_path_counts(ids: &[u32]) -> Option<(u64, u64)> {
    let mut map_ids = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if ids.contains(&info.id()) {
            for m in info.map_ids().ok().flatten().unwrap_or_default() {
                if !map_ids.contains(&m) {
                    map_ids.push(m);
                }
            }
        }
    }
    let per_cpu = |id: u32| -> Option<PerCpuArray<MapData, u64>> {
        let map = Map::from_map_data(MapData::from_id(id).ok()?).ok()?;
        PerCpuArray::try_from(map).ok()
    };
    let sum = |a: &PerCpuArray<MapData, u64>, i: u32| -> u64 {
        a.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)
    };
    let (mut fast, mut selected, mut found) = (0, 0, false);
    for id in map_ids {
        let Ok(info) = MapInfo::from_id(id) else { continue };
        match info.name_as_str() {
            Some(n) if n == maps::EVENTS => {
                if let Some(a) = per_cpu(id) {
                    fast += sum(&a, Event::FastPath as u32);
                    found = true;
                }
            }
            Some(n) if n == maps::SELECTED => {
                if let Some(a) = per_cpu(id) {
                    selected += (0..MAX_SLOTS).map(|i| sum(&a, i)).sum::<u64>();
                    found = true;
                }
            }
            _ => {}
        }
    }
    found.then_some((fast, selected))
}

/// Summed (run time ns, run count) of the programs `ids`.
pub fn prog_counters(ids: &[u32]) -> Option<(u64, u64)> {
    if ids.is_empty() {
        return None;
    }
    let mut found = false;
    let (mut ns, mut cnt) = (0u64, 0u64);
    for info in aya::programs::loaded_programs().flatten() {
        if ids.contains(&info.id()) {
            found = true;
            ns += info.run_time().as_nanos() as u64;
            cnt += info.run_count();
        }
    }
    found.then_some((ns, cnt))
}

pub fn machine() -> (String, String) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    (model, kernel_release())
}

/// Clock ticks of user + system time of `pid` (all its threads, live and exited).
pub fn proc_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// The machine's (user + nice + system, steal) clock ticks so far, all CPUs.
pub fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    (at(0) + at(1) + at(2), at(7))
}

/// CPU the bench itself uses so far: this process and every process of every deployment.
pub fn own_ticks(deps: &[Deployment]) -> u64 {
    let mut pids = vec![std::process::id()];
    for d in deps {
        for r in &d.roots {
            pids.extend(descendants(*r));
        }
        if let Some(n) = &d.nginx {
            pids.push(n.pid());
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().map(proc_ticks).sum()
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn raise_nofile() {
    let lim = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into a rlimit we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
        let raised = libc::rlimit { rlim_cur: cur.rlim_max, rlim_max: cur.rlim_max };
        // SAFETY: setrlimit reads a rlimit we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
}

/// The 1-minute load average.
pub fn loadavg1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// CPU time (ns) of the bench process, every thread: the load generator and its bookkeeping.
pub fn own_cpu_ns() -> u64 {
    process_totals(std::process::id()).1
}

/// The commit the bench was built from (`git rev-parse HEAD` in the workspace), marked when the
/// work tree has uncommitted changes; "unknown" outside a git checkout.
pub fn git_commit() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git").arg("-C").arg(&root).args(args).output().ok()
    };
    let Some(head) = git(&["rev-parse", "HEAD"]).filter(|o| o.status.success()) else {
        return "unknown".into();
    };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(o) if o.status.success() && !o.stdout.is_empty() => {
            format!("{head} (with uncommitted changes)")
        }
        _ => head,
    }
}

/// Clock ticks per second.
pub fn clock_hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}
