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

#[test]
fn top_draws_quits_and_restores_the_terminal() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let metrics = Arc::new(Metrics::new());
    metrics.update(report());
    let server = runtime
        .block_on(http::serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), || Ok(())))
        .unwrap();
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
