//! The registry thread: one `poll` loop over the registration socket, the registration
//! connections, the workers' pidfds and a wake-up eventfd, with a reconciliation tick.
//!
//! Owns the registration socket, the wake-up eventfd, the tick and the accept back-off; the
//! registry's state is [`State`]'s, whose parts this loop feeds with what it polls.
//!
//! Invariants: the loop turns at least once a second and beats the heartbeat each time; it only
//! reads sockets without waiting and gives every peer descriptor to the closer (through
//! [`State`]); accepting takes at most [`ACCEPTS_PER_TURN`] connections per turn, and backs off
//! (up to a second) when descriptors run out instead of spinning on EMFILE; while the closer
//! holds its budget of descriptors ([`State::reading`]) it neither accepts nor reads
//! registrations, and watches connections only for hang-ups (departures go on).
use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    counters::Counters,
    shared::Shared,
    state::{Event, State},
    RegistryOptions,
};
use crate::sys;

#[derive(Clone, Copy)]
enum Source {
    Listener,
    Wake,
    State(Event),
}

pub(super) struct Loop {
    shared: Arc<Shared>,
    listener: OwnedFd,
    wake: Arc<OwnedFd>,
    interval: Duration,
    state: State,
    /// Accepting is paused until then (descriptors ran out).
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
}

/// The loop turns at least this often, so that the heartbeat stays fresh.
const MAX_TURN: Duration = Duration::from_secs(1);

/// While reading is stopped (the closer holds its budget), the loop looks this often whether
/// the closer has caught up.
const BUDGET_RECHECK: Duration = Duration::from_millis(50);

/// Connections accepted per turn of the loop at most.
const ACCEPTS_PER_TURN: usize = 48;

impl Loop {
    pub(super) fn new(
        shared: Arc<Shared>,
        listener: OwnedFd,
        wake: Arc<OwnedFd>,
        netns: u64,
        options: &RegistryOptions,
    ) -> std::io::Result<Self> {
        let state = State::new(shared.clone(), wake.clone(), netns, options)?;
        Ok(Self {
            shared,
            listener,
            wake,
            interval: options.reconcile_interval,
            state,
            accept_paused_until: None,
            accept_backoff: Duration::ZERO,
        })
    }

    pub(super) fn run(&mut self) {
        let mut next_tick = Instant::now() + self.interval;
        while !self.shared.stopping() {
            self.shared.beat();
            self.state.turn();
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            let mut until = next_tick.min(now + MAX_TURN);
            if let Some(t) = self.accept_paused_until {
                until = until.min(t);
            }
            let reading = self.state.reading();
            if !reading {
                // Nothing wakes the loop when the closer catches up: look again soon.
                until = until.min(now + BUDGET_RECHECK);
            }
            for source in self.poll(until.saturating_duration_since(now), reading) {
                match source {
                    Source::Listener => self.accept_all(),
                    Source::Wake => sys::eventfd_drain(self.wake.as_fd()),
                    Source::State(event) => self.state.on_event(event),
                }
            }
            self.state.collect_made();
            if Instant::now() >= next_tick {
                self.state.tick();
                next_tick = Instant::now() + self.interval;
            }
        }
        self.state.finish();
    }

    /// Waits up to `timeout` for something to read; returns what is readable. Without
    /// `reading`, the registration socket is not watched, and connections only for hang-ups.
    fn poll(&self, timeout: Duration, reading: bool) -> Vec<Source> {
        let mut fds: Vec<(BorrowedFd<'_>, bool)> = Vec::new();
        let mut sources = Vec::new();
        if self.accept_paused_until.is_none() && reading {
            fds.push((self.listener.as_fd(), true));
            sources.push(Source::Listener);
        }
        fds.push((self.wake.as_fd(), true));
        sources.push(Source::Wake);
        for (event, fd) in self.state.watched() {
            fds.push((fd, reading || !matches!(event, Event::Conn(_))));
            sources.push(Source::State(event));
        }
        let ready = match sys::poll_ready(&fds, timeout) {
            Ok(r) => r,
            Err(e) => {
                log::error!("registry {e}");
                std::thread::sleep(Duration::from_millis(100));
                vec![false; fds.len()]
            }
        };
        sources.into_iter().zip(ready).filter(|(_, r)| *r).map(|(s, _)| s).collect()
    }

    /// Accepts what waits, at most [`ACCEPTS_PER_TURN`]: a connect/close flood must not keep the
    /// thread here, away from departures, reconciliation and the heartbeat. The rest waits for
    /// the next turn (the listener is still readable, so that turn comes at once).
    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            if !self.state.reading() {
                return;
            }
            match sys::accept(self.listener.as_fd()) {
                Ok(fd) => {
                    self.accept_backoff = Duration::ZERO;
                    self.state.accepted(fd);
                }
                Err(e) if e.is_transient() => return,
                Err(e) if e.is_exhaustion() => {
                    self.accept_backoff =
                        (self.accept_backoff * 2).clamp(Duration::from_millis(50), MAX_TURN);
                    self.accept_paused_until = Some(Instant::now() + self.accept_backoff);
                    Counters::bump(&self.shared.counters().accept_backoffs);
                    log::warn!(
                        "registry {e}: not accepting for {:?} ({} connections open)",
                        self.accept_backoff,
                        self.state.connections()
                    );
                    // Make room: refused connections first, then unregistered ones (the only
                    // ones we can drop).
                    self.state.make_room();
                    return;
                }
                Err(e) => {
                    log::warn!("registry {e}");
                    return;
                }
            }
        }
    }
}
