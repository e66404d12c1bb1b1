//! `cargo xtask run`: the product doing its job. uWSGI with the seed's settings (8 processes x 20
//! threads, GIL-bound requests) runs under `reuselb run`, whose live per-worker view fills the
//! terminal while wrk sends a bounded load; then everything stops by itself.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;

use crate::{build, command, workspace::Workspace};

/// The address in deploy/examples/demo/uwsgi.ini.
const DEMO_ADDR: &str = "127.0.0.1:8000";

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// How long wrk sends load, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Concurrent wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Selection policy: speed-aware, least-loaded, work-left, p2c, round-robin, hash or pack.
    #[arg(long, default_value = "speed-aware")]
    policy: String,
}

pub fn run(ws: &Workspace, args: &DemoArgs) -> Result<()> {
    let artifacts = build::run(ws)?;
    let addr: SocketAddr = DEMO_ADDR.parse().expect("valid demo address");
    TcpListener::bind(addr).with_context(|| format!("the demo needs {addr} free"))?;
    let ini = ws.root.join("deploy/examples/demo/uwsgi.ini");
    let mut reuselb = Command::new(&artifacts.reuselb);
    reuselb
        .args(["run", "--listen", DEMO_ADDR, "--policy", &args.policy, "--view"])
        .arg("--shim")
        .arg(&artifacts.shim)
        .args(["--socket", "/run/reuselb/demo.sock", "--", "uwsgi", "--ini"])
        .arg(&ini);
    println!("xtask: $ {reuselb:?}");
    let mut server = Stopper(reuselb.spawn().context("starting reuselb run")?);
    wait_until_serving(addr, &mut server.0)?;
    let mut wrk = Command::new("wrk");
    // A new connection per request, as nginx's uwsgi_pass makes them: that is what gets balanced.
    wrk.args([
        "-t2",
        &format!("-c{}", args.connections),
        &format!("-d{}s", args.seconds),
        "--latency",
    ])
    .args(["-H", "Connection: close"])
    .arg(format!("http://{DEMO_ADDR}/"))
    .stdout(Stdio::piped());
    println!("xtask: $ {wrk:?}   (bounded load; its report follows the view)");
    let report = command::probe(&mut wrk)?;
    ensure!(report.status.success(), "wrk failed: {}", String::from_utf8_lossy(&report.stderr));
    server.stop()?;
    let text = String::from_utf8_lossy(&report.stdout);
    println!("\nxtask: wrk report\n{text}");
    println!("{}", explain(&text));
    Ok(())
}

/// What the wrk report means, in plain words: `Connection: close` makes uWSGI's http-socket
/// close every connection after its answer, and wrk 4 counts a close it reads before it
/// reconnects as a "read" socket error, so read errors are not failed requests. Failures show as
/// connect or timeout errors or non-2xx answers; this names those counts.
fn explain(report: &str) -> String {
    let count = |label: &str| -> u64 {
        report
            .split(label)
            .nth(1)
            .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let requests = report
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let (read, connect, timeout) = (count("read "), count("connect "), count("timeout "));
    let non_2xx = count("Non-2xx or 3xx responses:");
    let failures = connect + timeout + non_2xx;
    let mut out = format!(
        "xtask: {requests} requests answered; failed: {failures} (connect errors {connect}, \
         timeouts {timeout}, non-2xx answers {non_2xx})."
    );
    if read > 0 {
        out.push_str(&format!(
            "\nxtask: the {read} \"read\" socket errors are not failures: wrk asked for \
             `Connection: close` (a new connection per request, as nginx's uwsgi_pass makes them: \
             that is what reuselb balances), so uWSGI closes each connection after its complete \
             answer, and wrk counts a close it reads before reconnecting as a read error."
        ));
    }
    out
}

/// Waits until the app answers on `addr`, or fails if `child` exits first.
fn wait_until_serving(addr: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("reuselb run exited before the app served: {status}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("the demo app did not answer on {addr} within 60 s")
}

/// Stops `reuselb run` (and with it uWSGI) with SIGINT, as Ctrl-C would; also on early return.
struct Stopper(Child);

impl Stopper {
    fn stop(&mut self) -> Result<()> {
        signal(&self.0, "INT")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.0.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.0.kill().context("killing reuselb run")?;
        bail!("reuselb run did not stop within 30 s of SIGINT")
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

/// Sends a signal by name with kill(1): xtask keeps to std.
fn signal(child: &Child, name: &str) -> Result<()> {
    command::stdout_of(Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()))
        .map(drop)
}

#[cfg(test)]
mod tests {
    /// A report of wrk 4.1 from the demo: read errors are closes, the failures are counted apart.
    #[test]
    fn explains_read_errors() {
        let report = "Running 5s test @ http://127.0.0.1:8000/\n  2 threads and 64 connections\n  \
             6047 requests in 5.01s, 601.08KB read\n  Socket errors: connect 0, read 6043, write 0, \
             timeout 2\n  Non-2xx or 3xx responses: 1\nRequests/sec:   1206.77\n";
        let text = super::explain(report);
        let failures = "failed: 3 (connect errors 0, timeouts 2, non-2xx answers 1)";
        assert!(text.contains(&format!("6047 requests answered; {failures}")), "{text}");
        assert!(text.contains("the 6043 \"read\" socket errors are not failures"), "{text}");
    }
}
