//! `reuselb top` on a real terminal: the binary runs in a tmux pane against the library's own
//! HTTP server (serving a report this test sets). The pane must show the table on the alternate
//! screen; q must end it with status 0, and the controller going away with status 1; either way
//! the terminal must be back as it was (main screen, canonical mode and echo on).
use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use balancer_common::{protocol::Status, Policy};
use balancer_user::{
    http,
    loader::Program,
    metrics::Metrics,
    report::{Counts, GroupReport, Mode, Report, ServiceReport, WorkerReport},
};

/// A tmux session, killed when dropped.
struct Tmux(String);

impl Tmux {
    /// A detached 160x50 session running `command` in `sh`.
    fn start(name: &str, command: &str) -> Self {
        let out = Command::new("tmux")
            .args(["new-session", "-d", "-s", name, "-x", "160", "-y", "50", command])
            .output()
            .expect("tmux must be installed to test `reuselb top` (apt install tmux)");
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        Self(name.to_owned())
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pane(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.0])
    }

    fn alternate_screen(&self) -> bool {
        self.tmux(&["display-message", "-p", "-t", &self.0, "#{alternate_on}"]).trim() == "1"
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", &self.0, keys]);
    }

    /// Waits until the pane holds `text`; the pane's content either way.
    fn wait_for(&self, text: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let pane = self.pane();
            if pane.contains(text) {
                return Ok(pane);
            }
            if Instant::now() > deadline {
                return Err(pane);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
    }
}

fn report() -> Report {
    let worker = |slot, pid, selected| WorkerReport {
        slot,
        pid,
        weight: 1,
        epoch: 1,
        inflight: 2,
        selected,
        accepted: selected,
        completed: selected - 2,
        ..Default::default()
    };
    let mut registrations = Counts::default();
    registrations.set(Status::Ok, 2);
    Report::new(
        Mode::Daemon,
        Instant::now(),
        vec![ServiceReport {
            name: "web".into(),
            registrations,
            groups: vec![GroupReport {
                addr: "127.0.0.1:8000".parse().unwrap(),
                policy: Policy::LeastLoaded,
                pack_depth: None,
                program: Program::SelectOrMigrate,
                adopted: false,
                pod: None,
                mean_response_us: None,
                workers: vec![worker(0, 4242, 300), worker(1, 4343, 100)],
                events: Counts::default(),
            }],
            registry: Default::default(),
        }],
    )
}

/// `reuselb top` in a pane, then `stty -a` (to see the terminal's modes after it) and a marker
/// with its exit status.
fn start_top(name: &str, addr: std::net::SocketAddr) -> Tmux {
    let command = format!(
        "{} top --addr {addr} --interval 0.2; echo TOP-EXITED-$?; stty -a | tr ' ' '\\n' | \
         grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo; sleep 60",
        env!("CARGO_BIN_EXE_reuselb")
    );
    Tmux::start(name, &command)
}

fn assert_restored(t: &Tmux, pane: &str) {
    assert!(!t.alternate_screen(), "still on the alternate screen:\n{pane}");
    assert!(pane.contains("icanon echo"), "terminal not back in canonical mode with echo:\n{pane}");
}

/// The library's HTTP server on an ephemeral loopback port, serving `report`; and the metrics it
/// serves from, for a test that changes the report.
fn serve(runtime: &tokio::runtime::Runtime, report: Report) -> (Arc<Metrics>, http::Server) {
    let metrics = Arc::new(Metrics::new());
    metrics.update(report);
    let server = runtime
        .block_on(http::serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), || Ok(())))
        .unwrap();
    (metrics, server)
}

#[test]
fn top_draws_quits_and_restores_the_terminal() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (metrics, server) = serve(&runtime, report());
    let addr = server.local_addr();

    // q quits with 0.
    let t = start_top(&format!("reuselb-top-q-{}", std::process::id()), addr);
    let pane = t.wait_for("q: quit", Duration::from_secs(10)).unwrap_or_else(|p| {
        panic!("no table in the pane:\n{p}");
    });
    assert!(pane.contains("web 127.0.0.1:8000  policy least-loaded"), "{pane}");
    assert!(pane.contains("4242") && pane.contains("75.0%"), "{pane}");
    assert!(t.alternate_screen(), "not on the alternate screen:\n{pane}");
    // The next frames read the report again.
    let mut next = report();
    next.services[0].groups[0].workers[1].pid = 4444;
    metrics.update(next);
    t.wait_for("4444", Duration::from_secs(5)).unwrap_or_else(|p| panic!("no redraw:\n{p}"));
    t.keys("q");
    let pane = t
        .wait_for("TOP-EXITED-0", Duration::from_secs(5))
        .unwrap_or_else(|p| panic!("q did not quit with 0:\n{p}"));
    assert_restored(&t, &t.wait_for("echo", Duration::from_secs(5)).unwrap_or(pane));

    // Ctrl-C quits with 0 too.
    let t = start_top(&format!("reuselb-top-c-{}", std::process::id()), addr);
    t.wait_for("q: quit", Duration::from_secs(10)).unwrap_or_else(|p| panic!("no table:\n{p}"));
    t.keys("C-c");
    let pane = t
        .wait_for("TOP-EXITED-0", Duration::from_secs(5))
        .unwrap_or_else(|p| panic!("Ctrl-C did not quit with 0:\n{p}"));
    assert_restored(&t, &t.wait_for("echo", Duration::from_secs(5)).unwrap_or(pane));

    // The controller goes away: status 1, the reason on the main screen.
    let t = start_top(&format!("reuselb-top-gone-{}", std::process::id()), addr);
    t.wait_for("q: quit", Duration::from_secs(10)).unwrap_or_else(|p| panic!("no table:\n{p}"));
    drop(server);
    let pane = t
        .wait_for("TOP-EXITED-1", Duration::from_secs(15))
        .unwrap_or_else(|p| panic!("top did not exit with 1 when the server went away:\n{p}"));
    assert!(pane.contains("went away"), "{pane}");
    assert_restored(&t, &t.wait_for("echo", Duration::from_secs(5)).unwrap_or(pane));
}

/// A pseudo-terminal: the terminal side, for the child, and the other side, this test's.
struct Pty {
    master: std::os::fd::OwnedFd,
    slave: std::fs::File,
}

fn open_pty(cols: u16, rows: u16) -> Pty {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::os::unix::fs::OpenOptionsExt;
    let master =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name.to_str().unwrap())
        .expect("opening the pty's terminal side");
    let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&slave, size).expect("setting the pty's size");
    rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).expect("O_NONBLOCK");
    Pty { master, slave }
}

/// Reads the pty's output until it holds `text` or `timeout` passes; the output either way.
fn read_until(
    master: &std::os::fd::OwnedFd,
    text: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(master, &mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(format!(
                    "reading the pty: {e}; so far:\n{}",
                    String::from_utf8_lossy(&seen)
                ))
            }
        }
        let out = String::from_utf8_lossy(&seen).into_owned();
        if out.contains(text) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(out);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system) of `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the 3rd field, utime the 14th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    let ticks = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64(fields.iter().sum::<u64>() as f64 / ticks as f64)
}

/// `reuselb top` on a pseudo-terminal (80x24); once it has drawn, the other side closes, as
/// when a tmux session is killed or an SSH connection drops. With `controlling`, the pty is the
/// child's controlling terminal (it leads a session of its own), so the kernel sends it SIGHUP;
/// without, no signal comes and only the terminal says it hung up. Either way it must exit
/// within 5 s; if it does not, the failure says how much CPU it was using.
fn top_exits_when_its_pty_closes(controlling: bool) {
    use std::os::unix::process::CommandExt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_metrics, server) = serve(&runtime, report());
    let pty = open_pty(80, 24);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reuselb"));
    cmd.args(["top", "--addr", &server.local_addr().to_string(), "--interval", "0.2"])
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap());
    if controlling {
        // SAFETY: between fork and exec the closure only makes system calls (setsid, ioctl),
        // which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                // SAFETY: descriptor 0 is the pty's terminal side, open in the child.
                let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
                Ok(())
            });
        }
    } else {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().expect("starting reuselb top");
    drop(pty.slave);
    let drawn = read_until(&pty.master, "q: quit", Duration::from_secs(10));
    if let Err(out) = &drawn {
        let _ = child.kill();
        let _ = child.wait();
        panic!("reuselb top drew nothing on the pty:\n{out}");
    }
    let frame = drawn.unwrap();
    assert!(frame.contains("4242") && frame.contains("75.0%"), "{frame}");
    // Hang up: the terminal's other side goes away.
    drop(pty.master);
    let hung_up = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if hung_up.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some(status) = status else {
        let before = cpu_time(child.id());
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_time(child.id()) - before;
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "reuselb top still ran 5 s after its terminal hung up (controlling terminal: \
             {controlling}), using {:.0} % of a CPU",
            used.as_secs_f64() * 100.0
        );
    };
    println!(
        "controlling terminal {controlling}: exited {status} {} ms after the hangup",
        hung_up.elapsed().as_millis()
    );
    drop(server);
}

#[test]
fn top_exits_when_its_controlling_terminal_hangs_up() {
    top_exits_when_its_pty_closes(true);
}

#[test]
fn top_exits_when_its_terminal_hangs_up_without_a_signal() {
    top_exits_when_its_pty_closes(false);
}

/// 64 workers on an 80x24 terminal: top shows the first screen with a scrolling hint, G
/// scrolls to the last worker, g back to the top, and q quits with 0.
#[test]
fn top_scrolls_64_workers_on_80_columns() {
    use std::os::unix::process::CommandExt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut big = report();
    big.services[0].groups[0].workers = (0..64)
        .map(|slot| WorkerReport {
            slot,
            pid: 5000 + slot,
            weight: 1,
            epoch: 1,
            selected: 100,
            completed: 100,
            ..Default::default()
        })
        .collect();
    let (_metrics, server) = serve(&runtime, big);
    let pty = open_pty(80, 24);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reuselb"))
        .args(["top", "--addr", &server.local_addr().to_string(), "--interval", "5"])
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap())
        .process_group(0)
        .spawn()
        .expect("starting reuselb top");
    drop(pty.slave);
    let key = |k: &[u8]| rustix::io::write(&pty.master, k).expect("typing on the pty");
    let step = |want: &str| {
        read_until(&pty.master, want, Duration::from_secs(10)).map_err(|out| {
            let tail: Vec<char> = out.chars().collect();
            let tail: String = tail[tail.len().saturating_sub(2000)..].iter().collect();
            format!("no {want:?} on the pty; its last output:\n{tail}")
        })
    };
    let result = (|| {
        let first = step("j/k space/b g/G: scroll  q: quit")?;
        if !first.contains("lines 1-23 of ") || first.contains("  5063 ") {
            return Err(format!("first screen:\n{first}"));
        }
        key(b"G");
        step("  5063 ")?;
        key(b"g");
        step("lines 1-23 of ")?;
        key(b"q");
        Ok(())
    })();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait().unwrap() {
            Some(s) => break Some(s),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result.unwrap_or_else(|e| panic!("{e}"));
    assert!(status.is_some_and(|s| s.success()), "q did not quit with 0: {status:?}");
}
