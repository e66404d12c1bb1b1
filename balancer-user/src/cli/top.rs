//! `reuselb top`: the tables of `reuselb status`, redrawn every interval.
//!
//! On a terminal (stdin and stdout both) it runs full screen with crossterm: raw mode and the
//! alternate screen. q / Ctrl-C / Ctrl-D quits; j/k or the arrows scroll a line, space/b or
//! PgDn/PgUp a page, g/G to the top or the bottom (64 workers do not fit on one screen). Every
//! line is cut at the terminal's width, so nothing wraps.
//!
//! The terminal is put back on every way out: a key, the controller going away (exit status 1),
//! an error, a panic (the guard's `Drop`), and SIGTERM, SIGHUP or SIGINT from outside (caught,
//! then handled as a quit). Like top(1), it ends when its terminal hangs up, whether or not a
//! SIGHUP reaches it (a tmux session killed, an SSH connection dropped): a hangup or an error
//! on the terminal (POLLHUP/POLLERR, EOF or EIO on a read) ends it with status 0, and a frame
//! that cannot be written is an error (status 1). The keys are read here, from the descriptor,
//! rather than through crossterm's event reader: crossterm 0.29 retries a read that returns EOF
//! or EIO forever (its `try_read`), which is how a hung-up `reuselb top` used to spin at most
//! of a CPU.
//!
//! Elsewhere (a pipe, say) it prints one plain frame per interval until the controller goes
//! away or the output is closed.
use std::{
    io::{IsTerminal, Write},
    os::fd::AsFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use balancer_user::{http::DEFAULT_METRICS_ADDR, report::Report, sys, view};
use crossterm::{
    cursor, execute, queue,
    terminal::{self, ClearType},
};
use rustix::event::{PollFd, PollFlags, Timespec};

use super::status::{fetch, not_there, resolve};

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Metrics address of the daemon or `reuselb run` (HOST:PORT).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_METRICS_ADDR)]
    addr: String,
    /// Seconds between redraws.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
}

/// Set by SIGTERM, SIGHUP and SIGINT: quit and put the terminal back.
static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    QUIT.store(true, Ordering::Relaxed);
}

/// Without SA_RESTART: the poll that waits for a key fails with EINTR and the loop sees QUIT.
fn catch_signals() -> Result<()> {
    sys::on_signals(&[libc::SIGTERM, libc::SIGHUP, libc::SIGINT], on_signal, false)?;
    Ok(())
}

/// A move of the visible window over the frame's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scroll {
    Lines(isize),
    Pages(isize),
    Top,
    Bottom,
}

/// What ended a wait for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The interval passed: read the report again.
    Timeout,
    /// A quit key or a signal.
    Quit,
    /// The terminal hung up or failed: nobody is watching.
    Hangup,
    Scroll(Scroll),
}

/// The first key in `bytes` that means something to top (raw mode: Ctrl-C and Ctrl-D arrive
/// as bytes 3 and 4).
fn decode_keys(bytes: &[u8]) -> Option<Wake> {
    const SEQUENCES: &[(&[u8], Scroll)] = &[
        (b"\x1b[A", Scroll::Lines(-1)),
        (b"\x1b[B", Scroll::Lines(1)),
        (b"\x1b[5~", Scroll::Pages(-1)),
        (b"\x1b[6~", Scroll::Pages(1)),
        (b"\x1b[H", Scroll::Top),
        (b"\x1b[F", Scroll::Bottom),
    ];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b {
            if let Some((_, scroll)) = SEQUENCES.iter().find(|(s, _)| bytes[i..].starts_with(s)) {
                return Some(Wake::Scroll(*scroll));
            }
            // Some other sequence (a function key): skip it to its final byte.
            i += 1;
            while i < bytes.len() && !bytes[i].is_ascii_alphabetic() && bytes[i] != b'~' {
                i += 1;
            }
            i += 1;
            continue;
        }
        let wake = match bytes[i] {
            b'q' | b'Q' | 3 | 4 => Some(Wake::Quit),
            b'j' => Some(Wake::Scroll(Scroll::Lines(1))),
            b'k' => Some(Wake::Scroll(Scroll::Lines(-1))),
            b' ' => Some(Wake::Scroll(Scroll::Pages(1))),
            b'b' => Some(Wake::Scroll(Scroll::Pages(-1))),
            b'g' => Some(Wake::Scroll(Scroll::Top)),
            b'G' => Some(Wake::Scroll(Scroll::Bottom)),
            _ => None,
        };
        if wake.is_some() {
            return wake;
        }
        i += 1;
    }
    None
}

/// Waits up to `timeout` for a key, a signal or a hangup of the terminal on stdin.
///
/// Each pass either sleeps in poll (at most 100 ms, so a signal is seen soon), reads bytes, or
/// returns: EOF, EIO, POLLHUP and POLLERR all return [`Wake::Hangup`], so no error repeats.
fn wait_for_input(timeout: Duration) -> Result<Wake> {
    let stdin = std::io::stdin();
    let tty = stdin.as_fd();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    loop {
        if QUIT.load(Ordering::Relaxed) {
            return Ok(Wake::Quit);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wake::Timeout);
        }
        let slice = left.min(Duration::from_millis(100));
        let wait = Timespec { tv_sec: 0, tv_nsec: slice.subsec_nanos().into() };
        let mut fds = [PollFd::new(&tty, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&wait)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("waiting for the terminal"),
        }
        let revents = fds[0].revents();
        if revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
            return Ok(Wake::Hangup);
        }
        match rustix::io::read(tty, &mut buf) {
            Ok(0) => return Ok(Wake::Hangup),
            Ok(n) => {
                if let Some(wake) = decode_keys(&buf[..n]) {
                    return Ok(wake);
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            // EIO: the terminal hung up; anything else will not get better either.
            Err(_) => return Ok(Wake::Hangup),
        }
    }
}

/// Raw mode and the alternate screen while it lives, and where the view is scrolled to.
struct Screen {
    /// Index of the first line of the frame on the screen.
    offset: usize,
}

impl Screen {
    fn enter() -> Result<Self> {
        terminal::enable_raw_mode().context("entering raw mode")?;
        // From here on, Drop puts the terminal back whatever happens.
        let screen = Screen { offset: 0 };
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .context("entering the alternate screen")?;
        Ok(screen)
    }

    /// The terminal's size (columns, rows); 80x24 if it cannot say.
    fn size() -> (usize, usize) {
        match rustix::termios::tcgetwinsize(std::io::stdout()) {
            Ok(ws) if ws.ws_col > 0 && ws.ws_row > 0 => (ws.ws_col.into(), ws.ws_row.into()),
            _ => (80, 24),
        }
    }

    fn scroll(&mut self, how: Scroll) {
        let page = Self::size().1.saturating_sub(1).max(1) as isize;
        self.offset = match how {
            Scroll::Lines(n) => self.offset.saturating_add_signed(n),
            Scroll::Pages(n) => self.offset.saturating_add_signed(n * page),
            Scroll::Top => 0,
            Scroll::Bottom => usize::MAX,
        };
    }

    fn draw(&mut self, report: &Report) -> Result<()> {
        let (cols, rows) = Self::size();
        let text = view::render_width(report, cols);
        let (visible, offset) = window(&text, cols, rows, self.offset);
        self.offset = offset;
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))?;
        // Raw mode: a line feed does not return the carriage.
        out.write_all(visible.join("\r\n").as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// The lines of `text` that fit a `cols` x `rows` screen from line `offset` (clamped so the
/// last screen is full), each cut at `cols` characters, and a last line that says where the
/// window is and which keys do what. Returns the lines and the clamped offset.
fn window(text: &str, cols: usize, rows: usize, offset: usize) -> (Vec<String>, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let body = rows.saturating_sub(1).max(1);
    let offset = offset.min(lines.len().saturating_sub(body));
    let end = (offset + body).min(lines.len());
    let mut visible: Vec<String> =
        lines[offset..end].iter().map(|l| l.chars().take(cols).collect()).collect();
    let footer = if lines.len() > body {
        format!("lines {}-{end} of {}  j/k space/b g/G: scroll  q: quit", offset + 1, lines.len())
    } else {
        "q: quit".to_owned()
    };
    visible.push(footer.chars().take(cols).collect());
    (visible, offset)
}

pub fn top(args: TopArgs) -> Result<i32> {
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    let addr = resolve(&args.addr).with_context(|| not_there(&args.addr))?;
    let (mut report, _) = fetch(addr).with_context(|| not_there(&args.addr))?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut screen = if interactive {
        catch_signals()?;
        Some(Screen::enter()?)
    } else {
        None
    };
    loop {
        match &mut screen {
            Some(screen) => {
                screen.draw(&report).context("drawing on the terminal")?;
                match wait_for_input(interval)? {
                    Wake::Timeout => {}
                    Wake::Quit | Wake::Hangup => return Ok(0),
                    Wake::Scroll(how) => {
                        screen.scroll(how);
                        continue;
                    }
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(view::render(&report).as_bytes())
                    .and_then(|()| out.flush())
                    .context("writing to stdout")?;
                drop(out);
                std::thread::sleep(interval);
            }
        }
        match fetch(addr) {
            Ok((r, _)) => report = r,
            Err(e) => {
                drop(screen);
                eprintln!("reuselb at {} went away ({e:#}); exiting", args.addr);
                return Ok(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(decode_keys(b"q"), Some(Wake::Quit));
        assert_eq!(decode_keys(b"\x03"), Some(Wake::Quit));
        assert_eq!(decode_keys(b"x\x04"), Some(Wake::Quit));
        assert_eq!(decode_keys(b"\x1b[B"), Some(Wake::Scroll(Scroll::Lines(1))));
        assert_eq!(decode_keys(b"\x1b[6~"), Some(Wake::Scroll(Scroll::Pages(1))));
        assert_eq!(decode_keys(b"G"), Some(Wake::Scroll(Scroll::Bottom)));
        // A function key's sequence is skipped whole: its letters are not keys.
        assert_eq!(decode_keys(b"\x1b[1;5Q"), None);
        assert_eq!(decode_keys(b"\x1bOP"), None);
        assert_eq!(decode_keys(b"zz"), None);
    }

    #[test]
    fn window_scrolls_and_cuts() {
        let text: String = (0..100).map(|i| format!("line {i} {}\n", "x".repeat(100))).collect();
        let (lines, offset) = window(&text, 80, 24, 0);
        assert_eq!((lines.len(), offset), (24, 0));
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:?}");
        assert!(lines[0].starts_with("line 0 ") && lines[22].starts_with("line 22 "));
        assert_eq!(lines[23], "lines 1-23 of 100  j/k space/b g/G: scroll  q: quit");
        // Past the end: the last full screen.
        let (lines, offset) = window(&text, 80, 24, usize::MAX);
        assert_eq!(offset, 77);
        assert!(lines[22].starts_with("line 99 "), "{lines:?}");
        // All of it fits: no scrolling hint.
        let (lines, offset) = window("a\nb\n", 80, 24, 5);
        assert_eq!((lines, offset), (vec!["a".to_owned(), "b".to_owned(), "q: quit".into()], 0));
    }
}
