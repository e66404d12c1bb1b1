//! Speed-aware end to end (issue 23): real uWSGI under `reuselb run --policy speed-aware`.
//!
//! One worker stopped (SIGSTOP): light traffic gives it a connection, which never comes back;
//! once the adaptive stall limit has passed (8 x the group's mean time to answer, here about 8 x
//! 40 ms), the load rises. Speed-aware gives the stopped worker no new connection; least-loaded,
//! the control on the same scene, gives it its share until its count matches the others' (it
//! sees counts, not that the count never moves). Counted from the program's own per-slot
//! selections (`/status`), not from answers.
//!
//! One worker slowed by stops in a loop: `/status` and `/metrics` must show its slowness, and
//! no other worker's.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer_common::{Policy, SLOW_FACTOR};
use balancer_user::report::WorkerReport;
use integration_tests::{
    apps::{
        apps_dir, free_port, loopback, require, serial, spawn_reuselb_run, wait_until, Load, Proc,
        TempDir, UwsgiConfig, UwsgiProto,
    },
    http::{get, status},
};

/// Workers of the app, and threads each (enough for the rise's requests to wait in parallel).
const PROCESSES: u32 = 4;
const THREADS: u32 = 8;
/// Every request: a 40 ms wait (the GIL released, like a database call), then a little CPU.
const PATH: &str = "/?io=40&cpu=0.5";
/// The light traffic that gives the stopped worker its first connection: one request at a time.
const LIGHT: Duration = Duration::from_millis(400);
/// How long after the stopped worker's first connection the load rises: past the stall limit
/// (about 330 ms for a 41 ms mean; a loaded machine stretches the mean, hence the margin).
const PAST_THE_LIMIT: Duration = Duration::from_millis(900);
/// The rise: closed-loop clients, and how long they run.
const CLIENTS: usize = 24;
const RISE: Duration = Duration::from_millis(700);

/// Continues the stopped worker when dropped, on every exit path (a failed assertion too).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: u32) -> Self {
        // SAFETY: kill(2) with a plain pid and signal number; no memory is involved.
        let r = unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        assert_eq!(r, 0, "SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        Stopped(pid as i32)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The workers in `/status` at `metrics`.
fn workers(metrics: SocketAddr) -> Vec<WorkerReport> {
    status(metrics).services.iter().flat_map(|s| s.workers()).copied().collect()
}

/// The program's selections of `pid`'s slot so far.
fn selected(metrics: SocketAddr, pid: u32) -> u64 {
    workers(metrics).iter().find(|w| w.pid == pid).map_or(0, |w| w.selected)
}

/// What the stopped worker got under one policy.
#[derive(Debug)]
struct Scene {
    /// Connections it gave the stopped worker during the rise, and to every worker.
    rise: u64,
    rise_all: u64,
}

/// uWSGI ([`PROCESSES`] x [`THREADS`], the bench app) under `reuselb run --policy <policy>`, up
/// and every worker registered: its config, the metrics address and the run.
fn start(dir: &TempDir, policy: Policy) -> (UwsgiConfig, SocketAddr, Proc) {
    let cfg = {
        let mut c = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
        c.processes = PROCESSES;
        c.threads = THREADS;
        c.app = apps_dir().join("bench_app.py");
        c
    };
    let metrics = loopback(free_port());
    let name = policy.name();
    let metrics_arg = metrics.to_string();
    let run = spawn_reuselb_run(
        &cfg.command_line(),
        cfg.addr,
        &dir.path().join(format!("{name}.sock")),
        &dir.path().join(format!("{name}.log")),
        &["--policy", name, "--metrics-addr", &metrics_arg, "--status-every", "0"],
    );
    let ready = cfg.wait_ready(Duration::from_secs(30))
        && wait_until(Duration::from_secs(10), || workers(metrics).len() == PROCESSES as usize);
    assert!(ready, "{name}: uWSGI not up and registered: {}", run.log_tail(30));
    (cfg, metrics, run)
}

/// Starts uWSGI under `reuselb run --policy <policy>`, warms it up (the group's mean), stops one
/// idle worker, gives it a connection with light traffic and, past the limit, raises the load;
/// returns what the program gave the stopped worker.
fn scene(dir: &TempDir, policy: Policy) -> Scene {
    let (cfg, metrics, run) = start(dir, policy);
    let name = policy.name();
    // The group's mean time to answer, from the shims.
    let warm = Load::run(cfg.addr, 4, PATH, Duration::from_millis(600));
    assert_eq!(warm.failed, 0, "{name}: warm-up failures: {:?}", warm.errors);
    assert!(
        wait_until(Duration::from_secs(5), || workers(metrics).iter().all(|w| w.inflight == 0)),
        "{name}: requests still in flight after the warm-up"
    );
    let victim = workers(metrics)[0].pid;
    let total = |m| workers(m).iter().map(|w| w.selected).sum::<u64>();
    let stopped = Stopped::stop(victim);
    let at_stop = selected(metrics, victim);
    // Light traffic, one request at a time: the stopped worker, idle, gets one soon (its
    // requests never come back, so a client waits there: more clients than one keep going).
    let light = Load::start(cfg.addr, 3, PATH, LIGHT * 4);
    let got_one = wait_until(LIGHT * 4, || selected(metrics, victim) > at_stop);
    std::thread::sleep(PAST_THE_LIMIT);
    let (before, before_all) = (selected(metrics, victim), total(metrics));
    let rise = Load::start(cfg.addr, CLIENTS, PATH, RISE);
    std::thread::sleep(RISE);
    let (after, after_all) = (selected(metrics, victim), total(metrics));
    drop(stopped);
    let (light, rise) = (light.finish(), rise.finish());
    drop(run);
    assert!(got_one, "{name}: the stopped worker got no connection from the light traffic");
    for (what, r) in [("light", &light), ("rise", &rise)] {
        assert_eq!(r.failed, 0, "{name}: {what} traffic: failed requests: {:?}", r.errors);
    }
    Scene { rise: after - before, rise_all: after_all - before_all }
}

/// Issue 23: a stopped worker gets (almost) no new connection under speed-aware once the
/// adaptive limit has passed, while least-loaded (the control, same scene) gives it its share as
/// the load rises. Catches `ignore-load` (slots in turn: a quarter of the rise); under `sk-pass`
/// the program selects nothing at all, and the traffic check fails.
#[test]
fn speed_aware_passes_over_a_stopped_worker_and_least_loaded_does_not() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("speed-stopped");
    let speed = scene(&dir, Policy::SpeedAware);
    let control = scene(&dir, Policy::LeastLoaded);
    println!("stopped worker: speed-aware {speed:?}, least-loaded {control:?}");
    assert!(
        speed.rise <= 1,
        "speed-aware gave the stopped worker {} of {} connections past the limit",
        speed.rise,
        speed.rise_all
    );
    // After the first check: a balancer that strands a quarter of the clients on the stopped
    // worker (`ignore-load`) leaves little traffic, and must fail there.
    assert!(
        speed.rise_all >= 100 && control.rise_all >= 100,
        "too little traffic in the rise to tell: {speed:?} {control:?}"
    );
    assert!(
        control.rise >= 3,
        "least-loaded gave the stopped worker only {} of {} connections in the rise: the scene \
         shows no defect to fix",
        control.rise,
        control.rise_all
    );
}

/// How a slowed worker is slowed: stopped this long, then let run [`DUTY_RUN`], over and over
/// (it runs about a sixteenth of the time, so a 40 ms request takes a few times longer there).
const DUTY_STOP: Duration = Duration::from_millis(300);
const DUTY_RUN: Duration = Duration::from_millis(20);
/// The load while a worker is slowed, and how long it runs.
const SLOWED_CLIENTS: usize = 6;
const SLOWED: Duration = Duration::from_secs(4);

/// Stops and continues a worker in a loop ([`DUTY_STOP`], [`DUTY_RUN`]) until dropped, then
/// continues it: on every exit path, a failed assertion too.
struct Throttled {
    pid: u32,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttled {
    fn start(pid: u32) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let stopped = Stopped::stop(pid);
                std::thread::sleep(DUTY_STOP);
                drop(stopped);
                std::thread::sleep(DUTY_RUN);
            }
        });
        Throttled { pid, done, thread: Some(thread) }
    }
}

impl Drop for Throttled {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        let failed = self.thread.take().is_some_and(|t| t.join().is_err());
        drop(Stopped(self.pid as i32));
        // A stop that failed (the worker gone) would show as "never slow": say so instead.
        assert!(!failed || std::thread::panicking(), "throttling worker {} failed", self.pid);
    }
}

/// What an operator reads of speed-aware's view: with every worker at the group's pace (the
/// control, after a warm-up) `/status` shows each one's slowness as 1; once one worker is slowed
/// (stopped 300 ms of every 320; its average response time, from the answer counters, ends at
/// 1.5 x every other's or more), it shows that worker's as 3 or more (slow) at some point of the
/// load, the ratio of the pace and group mean the same report shows, and never another's;
/// `/metrics` has the pace (in seconds) and slowness series of every worker. A report that
/// computed no slowness, or with the wrong mean (none: nothing is slow), fails the slowed
/// worker's check.
#[test]
fn status_and_metrics_show_a_slowed_workers_slowness() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("speed-slowness");
    let (cfg, metrics, run) = start(&dir, Policy::SpeedAware);
    let warm = Load::run(cfg.addr, 4, PATH, Duration::from_millis(800));
    assert_eq!(warm.failed, 0, "warm-up failures: {:?}", warm.errors);
    let before = workers(metrics);
    assert!(
        before.iter().all(|w| w.slowness == Some(1) && w.pace_us.is_some()),
        "after the warm-up every worker answers at the group's pace: {before:#?}"
    );
    let victim = before[0].pid;
    let throttled = Throttled::start(victim);
    let load = Load::start(cfg.addr, SLOWED_CLIENTS, PATH, SLOWED);
    // The most each worker's slowness reached, and the first report that called the victim slow.
    let mut most: BTreeMap<u32, u64> = BTreeMap::new();
    let mut slow_seen = None;
    let end = Instant::now() + SLOWED;
    while Instant::now() < end {
        let groups = status(metrics).services.into_iter().flat_map(|s| s.groups);
        for g in groups {
            for w in &g.workers {
                let slowness = w.slowness.unwrap_or(0);
                let m = most.entry(w.pid).or_default();
                *m = (*m).max(slowness);
                if w.pid == victim && slowness >= SLOW_FACTOR && slow_seen.is_none() {
                    slow_seen = Some((*w, g.mean_response_us));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(throttled);
    let load = load.finish();
    let text = get(metrics, "/metrics").map(|(_, body)| body).unwrap_or_default();
    let after = workers(metrics);
    drop(run);
    assert_eq!(load.failed, 0, "failed requests: {:?}", load.errors);
    let Some((seen, mean)) = slow_seen else {
        panic!(
            "the slowed worker {victim} never showed a slowness of {SLOW_FACTOR} or more: {most:?}"
        )
    };
    // The scene's premise, from figures the slowness does not use: the victim did answer slowly.
    let avg = |pid| after.iter().find(|w| w.pid == pid).and_then(|w| w.avg_response_us);
    let slowest_other = after.iter().filter(|w| w.pid != victim).filter_map(|w| w.avg_response_us);
    let (victim_avg, others) = (avg(victim).unwrap_or(0), slowest_other.max().unwrap_or(u64::MAX));
    println!(
        "slowness reached per pid (victim {victim}): {most:?}; first slow report {slow_seen:?}; \
         average response time: victim {victim_avg} us, others up to {others} us"
    );
    assert!(
        2 * victim_avg >= others.saturating_mul(3),
        "victim's average {victim_avg} us, others' up to {others}: the victim was not slowed"
    );
    let (pace, mean) = (seen.pace_us.unwrap_or(0), mean.unwrap_or(0));
    assert!(
        mean > 0 && seen.slowness == Some((pace / mean).min(balancer_common::SLOWNESS_CAP)),
        "slowness {:?} with a pace of {pace} us and a group mean of {mean} us",
        seen.slowness
    );
    for (pid, m) in &most {
        assert!(
            *pid == victim || *m < SLOW_FACTOR,
            "worker {pid}, not slowed, showed {m}: {most:?}"
        );
    }
    for w in &before {
        let value = |family: &str| -> f64 {
            let pid = format!("pid=\"{}\"", w.pid);
            let line = text.lines().find(|l| l.starts_with(family) && l.contains(&pid));
            let line =
                line.unwrap_or_else(|| panic!("no {family}..}} series for {}: {text}", w.pid));
            line.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()).expect("a number")
        };
        assert!(value("reuselb_worker_slowness{") >= 1.0, "{text}");
        // Seconds: every request waits 40 ms, and no mean it decays toward reaches 2 s.
        let pace = value("reuselb_worker_pace_seconds{");
        assert!((0.035..2.0).contains(&pace), "worker {}: pace {pace} s: {text}", w.pid);
    }
}
