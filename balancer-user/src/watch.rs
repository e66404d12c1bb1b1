//! `reuselb status` and `reuselb top`: read `/status` from a running `reuselb daemon` or
//! `reuselb run` and draw the per-worker tables of `view::render`.
use std::{
    io::{IsTerminal, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use balancer_user::status::Report;

use crate::daemon::DEFAULT_METRICS_ADDR;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Metrics address of the daemon or `reuselb run` (HOST:PORT).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_METRICS_ADDR)]
    addr: String,
    /// Print the JSON report instead of the tables.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Metrics address of the daemon or `reuselb run` (HOST:PORT).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_METRICS_ADDR)]
    addr: String,
    /// Seconds between redraws.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
}

/// GET `path` from `addr`: the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Result<String> {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("reading the answer of {target}"))?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("{target} did not answer in HTTP"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        bail!("{target}{path} answered `{status}`: {}", body.trim());
    }
    Ok(body.to_owned())
}

fn fetch(addr: &str) -> Result<(Report, String)> {
    let body = http_get(addr, "/status")?;
    let report =
        serde_json::from_str(&body).context("the /status answer is not a reuselb status report")?;
    Ok((report, body))
}

fn render(report: &Report) -> String {
    let mut out = format!(
        "reuselb {} ({}), up {}, {} balanced addresses\n\n",
        report.version,
        report.mode,
        uptime(report.uptime_seconds),
        report.services.len()
    );
    for s in &report.services {
        out.push_str(&s.render());
        let rejected: u64 = s.rejections.values().sum();
        out.push_str(&format!(
            "registrations: {} accepted, {rejected} refused{}\n\n",
            s.registrations,
            if s.adopted { "  (adopted after a restart)" } else { "" }
        ));
    }
    out
}

fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn status(args: StatusArgs) -> Result<i32> {
    let (report, body) = fetch(&args.addr).with_context(|| format!("no reuselb status at {} (is `reuselb daemon` or `reuselb run` running with that metrics address?)", args.addr))?;
    if args.json {
        print!("{body}");
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

/// Terminal settings to put back on exit.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Keys without Enter and without echo; Ctrl-C arrives as a byte (so the terminal is put back).
    fn enter() -> Option<Self> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed struct it fills.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(Self { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores what `enter` read.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Waits up to `timeout` for a key; true if it asks to quit (q, Q, Ctrl-C, Ctrl-D).
fn wait_for_quit(timeout: Duration, keys: bool) -> bool {
    if !keys {
        std::thread::sleep(timeout);
        return false;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            let mut b = [0u8; 16];
            // SAFETY: reads into our buffer.
            let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
            if n > 0 && b[..n as usize].iter().any(|c| matches!(c, b'q' | b'Q' | 3 | 4)) {
                return true;
            }
        }
    }
}

pub fn top(args: TopArgs) -> Result<i32> {
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    let (mut report, _) = fetch(&args.addr).with_context(|| format!("no reuselb status at {} (is `reuselb daemon` or `reuselb run` running with that metrics address?)", args.addr))?;
    let tty = std::io::stdout().is_terminal();
    let raw = RawTerminal::enter();
    let keys = raw.is_some();
    let mut out = std::io::stdout();
    loop {
        let mut frame = String::new();
        if tty {
            frame.push_str("\x1b[H\x1b[2J");
        }
        frame.push_str(&render(&report));
        if keys {
            frame.push_str("q: quit\n");
        }
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
        if wait_for_quit(interval, keys) {
            return Ok(0);
        }
        match fetch(&args.addr) {
            Ok((r, _)) => report = r,
            Err(e) => {
                drop(raw);
                eprintln!("reuselb at {} went away ({e:#}); exiting", args.addr);
                return Ok(1);
            }
        }
    }
}
