//! What the slow and stalls workloads do to one worker process while a point is measured
//! ([`during`]): slow moves it into a cgroup v1 CPU cgroup of its own whose CFS quota is
//! [`SLOW_CPU_PERCENT`] % of a CPU ([`CpuCap`]); stalls stops it with SIGSTOP and continues it
//! with SIGCONT on the schedule of [`Workload::stall_windows`] ([`Stopper`], a thread of its own
//! beside the load generator's). The process is [`Deployment::first_worker`], the same one in
//! every configuration; what was done is returned as the point's [`Impaired`] record.
//!
//! Invariant: both are guards, and dropping one restores the process whatever the exit path (the
//! run returns, fails, is interrupted by Ctrl-C, which makes the load generator return an error
//! through `check_interrupted`, or panics and unwinds): [`CpuCap`] moves the process back to the
//! cgroup it came from and removes its own cgroup; [`Stopper`] ends its thread (a stall under
//! way ends at once), then sends SIGCONT, so the process is never left stopped. Nothing is
//! impaired outside [`during`].
//!
//! Why SIGSTOP/SIGCONT rather than the cgroup v1 freezer: a stop and a continue take effect at
//! once (the freezer passes through FREEZING and has to be polled until FROZEN, which blurs a
//! 300 ms stall's edges), it needs no second cgroup hierarchy to create and remove per point, and
//! a stopped process still dies of SIGKILL, so the deployment's own cleanup (which kills process
//! groups) works even if a guard never ran, whereas a task frozen in cgroup v1 cannot die until
//! it is thawed. The process runs no handler: to its code the pause is invisible, as a page-in
//! is (uWSGI retries the EINTR its epoll_wait may return on resume).
use std::{
    fs,
    path::{Path, PathBuf},
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    configs::{
        Workload, SLOW_CPU_PERCENT, SLOW_PERIOD_US, SLOW_QUOTA_US, STALL_EVERY_MS, STALL_FIRST_MS,
        STALL_MS,
    },
    counters::process_totals,
    deploy::Deployment,
    raw::Impaired,
};

/// Where the cgroup v1 cpu controller is mounted (this machine's layout).
const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";

/// Runs `run` (one point's load) with `dep`'s first worker impaired as workload `w` says (slow,
/// stalls; other workloads: `run` alone, no record). `secs` is the run's window (the stalls'
/// schedule), which starts at `origin`: the stalls' schedule and their record
/// ([`Impaired::stalls_ms`]) are relative to it, so the caller can place its requests' send times
/// on the same clock. The process is restored before this returns, on every path.
pub fn during<T>(
    w: Workload,
    dep: &Deployment,
    origin: Instant,
    secs: f64,
    run: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<Impaired>)> {
    if !matches!(w, Workload::Slow | Workload::Stalls) {
        return Ok((run()?, None));
    }
    let pid = dep.first_worker();
    let (out, mut rec) = impaired_while(w, pid, origin, secs, run)?;
    rec.worker = dep.workers.iter().position(|&p| p == pid);
    Ok((out, Some(rec)))
}

/// [`during`] on process `pid`, for `w` slow or stalls; the stalls' times are from `origin`.
fn impaired_while<T>(
    w: Workload,
    pid: u32,
    origin: Instant,
    secs: f64,
    run: impl FnOnce() -> Result<T>,
) -> Result<(T, Impaired)> {
    let cpu0 = process_totals(pid).1;
    let mut rec = Impaired { pid, ..Default::default() };
    let out = if w == Workload::Slow {
        let cap = CpuCap::start(pid)?;
        let out = run()?;
        (rec.throttled_periods, rec.throttled_ms) = cap.throttled();
        rec.how = cap.how();
        drop(cap);
        out
    } else {
        let stopper = Stopper::start(pid, origin, w.stall_windows(secs))?;
        let out = run()?;
        rec.stalls_ms = stopper.finish();
        rec.how = format!(
            "SIGSTOP, then SIGCONT {STALL_MS} ms later, every {STALL_EVERY_MS} ms from {STALL_FIRST_MS} ms \
             into the run; {} stalls applied",
            rec.stalls_ms.len()
        );
        out
    };
    rec.cpu_ms = process_totals(pid).1.saturating_sub(cpu0) as f64 / 1e6;
    Ok((out, rec))
}

/// One process in a cgroup v1 CPU cgroup of its own, capped at [`SLOW_CPU_PERCENT`] % of a CPU.
/// Dropping it moves the process back to `home` and removes the cgroup.
struct CpuCap {
    pid: u32,
    /// The cgroup made for it: `reuselb-bench-<bench pid>-<pid>` under [`CPU_ROOT`].
    dir: PathBuf,
    /// The cgroup it was in.
    home: PathBuf,
}

impl CpuCap {
    fn start(pid: u32) -> Result<Self> {
        let root = Path::new(CPU_ROOT);
        if !root.join("cpu.cfs_quota_us").exists() {
            bail!("the slow workload needs the cgroup v1 cpu controller at {CPU_ROOT} (cpu.cfs_quota_us)");
        }
        let home = root.join(cpu_cgroup_of(pid)?.trim_start_matches('/'));
        let dir = root.join(format!("reuselb-bench-{}-{pid}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on the guard removes the cgroup, whatever fails next.
        let cap = CpuCap { pid, dir, home };
        write(&cap.dir.join("cpu.cfs_period_us"), SLOW_PERIOD_US)?;
        write(&cap.dir.join("cpu.cfs_quota_us"), SLOW_QUOTA_US)?;
        write(&cap.dir.join("cgroup.procs"), pid as u64)?;
        Ok(cap)
    }

    /// Periods in which the quota throttled the process, and the time it was throttled (ms).
    fn throttled(&self) -> (u64, f64) {
        let stat = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        (field("nr_throttled "), field("throttled_time ") as f64 / 1e6)
    }

    fn how(&self) -> String {
        format!(
            "cgroup v1 CPU quota: moved into {} with cpu.cfs_quota_us {SLOW_QUOTA_US} per cpu.cfs_period_us \
             {SLOW_PERIOD_US} ({SLOW_CPU_PERCENT}% of a CPU) for the run, then back to {}",
            self.dir.display(),
            self.home.display()
        )
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let pid = self.pid.to_string();
        // Home, or the root if home is gone; a process that has exited has nothing to move.
        if fs::write(self.home.join("cgroup.procs"), &pid).is_err() {
            let _ = fs::write(Path::new(CPU_ROOT).join("cgroup.procs"), &pid);
        }
        // An emptied v1 cgroup can be removed at once; a few tries in case a task lingers.
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!("warning: could not remove the cgroup {}", self.dir.display());
    }
}

/// The cgroup of `pid` in the cpu controller's v1 hierarchy (`/proc/<pid>/cgroup`).
fn cpu_cgroup_of(pid: u32) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "cpu").then(|| path.to_string())
        })
        .with_context(|| format!("process {pid} is in no cgroup v1 cpu hierarchy"))
}

fn write(path: &Path, v: u64) -> Result<()> {
    fs::write(path, v.to_string()).with_context(|| format!("writing {v} to {}", path.display()))
}

/// A thread that stops one process with SIGSTOP and continues it with SIGCONT on a schedule.
/// Dropping it (or [`Stopper::finish`]) ends the thread, a stall under way ending at once, and
/// then sends SIGCONT.
struct Stopper {
    pid: u32,
    /// Dropped to tell the thread to stop.
    quit: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Vec<(u32, u32)>>>,
}

impl Stopper {
    /// Starts the schedule `windows` ((start, end) in seconds from `t0`).
    fn start(pid: u32, t0: Instant, windows: Vec<(f64, f64)>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("stalls".into())
            .spawn(move || stall(pid, t0, &windows, &rx))
            .context("starting the stalls thread")?;
        Ok(Stopper { pid, quit: Some(tx), thread: Some(thread) })
    }

    /// Ends the schedule; the stalls as applied, (start, length) in ms.
    fn finish(mut self) -> Vec<(u32, u32)> {
        self.end()
    }

    fn end(&mut self) -> Vec<(u32, u32)> {
        self.quit.take();
        let done = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        // Whatever the thread did (or if it panicked), the process goes on.
        signal(self.pid, libc::SIGCONT);
        done
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.end();
    }
}

/// The stalls thread: each window, stop `pid` at its start and continue it at its end, until
/// `quit` says stop (or its sender is gone); returns the stalls as applied.
fn stall(
    pid: u32,
    t0: Instant,
    windows: &[(f64, f64)],
    quit: &mpsc::Receiver<()>,
) -> Vec<(u32, u32)> {
    let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
    let mut done = Vec::new();
    for &(a, b) in windows {
        if wait(quit, t0 + Duration::from_secs_f64(a)) {
            break;
        }
        let stopped = signal(pid, libc::SIGSTOP);
        let began = t0.elapsed();
        let asked = wait(quit, t0 + Duration::from_secs_f64(b));
        signal(pid, libc::SIGCONT);
        if stopped {
            done.push((ms(began), ms(t0.elapsed().saturating_sub(began))));
        }
        if asked {
            break;
        }
    }
    done
}

/// Sleeps until `at`; true if asked to quit meanwhile.
fn wait(quit: &mpsc::Receiver<()>, at: Instant) -> bool {
    let left = at.saturating_duration_since(Instant::now());
    !matches!(quit.recv_timeout(left), Err(RecvTimeoutError::Timeout))
}

/// Sends `sig` to `pid`; whether it was delivered.
fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory of this process.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    /// A child process, killed and reaped when dropped (also when an assertion fails).
    struct Kid(Child);

    impl Kid {
        fn sh(script: &str) -> Self {
            Kid(Command::new("sh").args(["-c", script]).spawn().expect("sh"))
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Kid {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The state letter of `/proc/<pid>/stat` (`T`: stopped).
    fn state(pid: u32) -> char {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
    }

    /// Stalls: the process is stopped during a stall and running after, when the run ends normally
    /// (the stall applied whole) and when it fails mid-stall (an interrupt): always continued.
    #[test]
    fn a_stalled_process_is_always_continued() {
        let kid = Kid::sh("exec sleep 30");
        let pid = kid.pid();
        let (_, rec) = impaired_while(Workload::Stalls, pid, Instant::now(), 1.0, || {
            std::thread::sleep(Duration::from_millis(650));
            assert_eq!(state(pid), 'T', "stopped 0.5-0.8 s into the run");
            std::thread::sleep(Duration::from_millis(350));
            Ok(())
        })
        .unwrap();
        assert_ne!(state(pid), 'T');
        assert_eq!(rec.stalls_ms.len(), 1, "{rec:?}");
        let (start, len) = rec.stalls_ms[0];
        assert!((500..700).contains(&start) && (290..450).contains(&len), "{rec:?}");
        assert!(rec.how.contains("SIGSTOP") && rec.pid == pid);
        let interrupted =
            impaired_while(Workload::Stalls, pid, Instant::now(), 1.0, || -> Result<()> {
                std::thread::sleep(Duration::from_millis(650));
                assert_eq!(state(pid), 'T');
                bail!("interrupted")
            });
        assert!(interrupted.is_err());
        assert_ne!(state(pid), 'T', "continued when the run failed mid-stall");
    }

    /// The stalls' schedule and their record are relative to the origin the caller gives, not to
    /// when the run starts: with an origin 400 ms back, the first stall (500-800 ms) is under way
    /// 250 ms into the run and is recorded as starting at ~500 ms.
    #[test]
    fn stalls_are_timed_from_the_callers_origin() {
        let kid = Kid::sh("exec sleep 30");
        let pid = kid.pid();
        let origin = Instant::now() - Duration::from_millis(400);
        let (_, rec) = impaired_while(Workload::Stalls, pid, origin, 1.0, || {
            std::thread::sleep(Duration::from_millis(250));
            assert_eq!(state(pid), 'T', "stopped 0.5-0.8 s after the origin");
            std::thread::sleep(Duration::from_millis(400));
            Ok(())
        })
        .unwrap();
        assert_ne!(state(pid), 'T');
        let (start, len) = rec.stalls_ms[0];
        assert!((500..600).contains(&start) && (250..450).contains(&len), "{rec:?}");
    }

    /// Slow: a busy process is held to the quota, then goes home and its cgroup is removed, when
    /// the run ends normally and when it fails (an interrupt). Needs root and cgroup v1's cpu
    /// controller (this machine's layout); says so and passes elsewhere.
    #[test]
    fn a_capped_process_goes_home_and_its_cgroup_goes() {
        if !Path::new(CPU_ROOT).join("cpu.cfs_quota_us").exists()
            // SAFETY: geteuid has no preconditions and touches no memory.
            || unsafe { libc::geteuid() } != 0
        {
            eprintln!("skipped: no cgroup v1 cpu controller at {CPU_ROOT}, or not root");
            return;
        }
        let kid = Kid::sh("while :; do :; done");
        let pid = kid.pid();
        let home = cpu_cgroup_of(pid).unwrap();
        let mine = format!("/reuselb-bench-{}-{pid}", std::process::id());
        let (_, rec) = impaired_while(Workload::Slow, pid, Instant::now(), 1.0, || {
            assert_eq!(cpu_cgroup_of(pid).unwrap(), mine);
            std::thread::sleep(Duration::from_millis(1000));
            Ok(())
        })
        .unwrap();
        assert_eq!(cpu_cgroup_of(pid).unwrap(), home);
        assert!(!Path::new(CPU_ROOT).join(&mine[1..]).exists(), "cgroup removed");
        // 5% of a CPU over ~1 s: ~50 ms (the first period may run whole before the cap bites).
        assert!(rec.cpu_ms < 150.0, "{rec:?}");
        assert!(rec.throttled_periods >= 5 && rec.throttled_ms > 500.0, "{rec:?}");
        assert!(rec.how.contains("cpu.cfs_quota_us 5000"), "{rec:?}");
        let interrupted =
            impaired_while(Workload::Slow, pid, Instant::now(), 1.0, || -> Result<()> {
                assert_eq!(cpu_cgroup_of(pid).unwrap(), mine);
                bail!("interrupted")
            });
        assert!(interrupted.is_err());
        assert_eq!(cpu_cgroup_of(pid).unwrap(), home, "home again after a failed run");
        assert!(
            !Path::new(CPU_ROOT).join(&mine[1..]).exists(),
            "cgroup removed after a failed run"
        );
    }
}
