//! `reuselb top`: the tables of `reuselb status`, redrawn every interval.
//!
//! On a terminal (stdin and stdout both) it runs full screen with crossterm: raw mode and the
//! alternate screen, q / Ctrl-C / Ctrl-D quits. The terminal is put back on every way out: a key,
//! the controller going away (exit status 1), an error, a panic (the guard's `Drop`), and SIGTERM,
//! SIGHUP or SIGINT from outside (caught, then handled as a quit). Elsewhere (a pipe, say) it
//! prints one plain frame per interval until the controller goes away.
use std::{
    io::{IsTerminal, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use balancer_user::{http::DEFAULT_METRICS_ADDR, report::Report, view};
use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, queue,
    terminal::{self, ClearType},
};

use crate::status::{fetch, not_there, resolve};

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

fn catch_signals() -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // SAFETY: sigaction is plain data; all-zero is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        // SAFETY: sa_mask is a valid sigset_t we own.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            bail!("sigaction({sig}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raw mode and the alternate screen while it lives.
struct Screen;

impl Screen {
    fn enter() -> Result<Self> {
        terminal::enable_raw_mode().context("entering raw mode")?;
        // From here on, Drop puts the terminal back whatever happens.
        let screen = Screen;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .context("entering the alternate screen")?;
        Ok(screen)
    }

    fn draw(&self, report: &Report) -> Result<()> {
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))?;
        // Raw mode: a line feed does not return the carriage.
        let frame = format!("{}q: quit\n", view::render(report)).replace('\n', "\r\n");
        out.write_all(frame.as_bytes())?;
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

fn is_quit(key: &KeyEvent) -> bool {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q' | 'Q') => true,
            KeyCode::Char('c' | 'd') => ctrl,
            _ => false,
        }
}

/// Waits up to `timeout` for a quit key or signal; true if one came.
fn wait_for_quit(timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if QUIT.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Short slices, so a signal is seen within 100 ms.
        if event::poll(left.min(Duration::from_millis(100))).context("reading the keyboard")? {
            if let Event::Key(key) = event::read().context("reading the keyboard")? {
                if is_quit(&key) {
                    return Ok(true);
                }
            }
        }
    }
}

pub fn top(args: TopArgs) -> Result<i32> {
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    let addr = resolve(&args.addr).with_context(|| not_there(&args.addr))?;
    let (mut report, _) = fetch(addr).with_context(|| not_there(&args.addr))?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let screen = if interactive {
        catch_signals()?;
        Some(Screen::enter()?)
    } else {
        None
    };
    loop {
        match &screen {
            Some(screen) => {
                screen.draw(&report)?;
                if wait_for_quit(interval)? {
                    return Ok(0);
                }
            }
            None => {
                print!("{}", view::render(&report));
                let _ = std::io::stdout().flush();
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
