//! Closing peer descriptors off the registry thread.
//!
//! Closing a descriptor a peer handed over can block: a TCP socket with `SO_LINGER {1, t}` and
//! unsent data waits up to `t` in `close()`, and closing a unix connection with messages still
//! queued closes the descriptors those messages carry, in the closing thread, with the same
//! effect. So the registry never closes a peer's descriptor (a handed-over socket, the copy of a
//! worker's listener, a registration connection) itself: it gives it to this closer.
//!
//! Invariants: [`Closer::close`] never blocks (a bounded queue, and an overflow list kept by the
//! caller's thread when the queue is full, retried at every turn); the closer thread sets
//! `SO_LINGER {1, 0}` on every TCP socket that does not listen before closing it, so that a
//! close aborts rather than waits; never on a listener (the connections it accepts would inherit
//! it and be reset when the worker closes them); a stuck close delays only other closes, never
//! registration, departures or reconciliation.
use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::sys;

/// Sets `SO_LINGER {1, 0}` on a TCP socket that does not listen, so that closing it aborts
/// rather than waits. Never on a listener: the sockets it accepts inherit the option, and a
/// worker's listener (which we hold a copy of) must keep closing its connections gracefully.
fn abort_if_lingering(fd: &OwnedFd) {
    match crate::listener::socket_facts(fd.as_fd()) {
        Ok(f) if f.tcp && !f.listening => {
            let _ = sys::set_linger_zero(fd.as_fd());
        }
        _ => {}
    }
}

/// Descriptors queued for the closer thread at most; more wait in the overflow list.
const QUEUE: usize = 4096;

pub(super) struct Closer {
    tx: Option<SyncSender<OwnedFd>>,
    overflow: Vec<OwnedFd>,
    /// Handed over and not closed yet (shared with the thread; exported as a gauge).
    pending: Arc<AtomicU64>,
    gauge: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Closer {
    /// Starts the closer thread. `gauge` is told the backlog after every change.
    pub(super) fn start(gauge: Arc<dyn Fn(u64) + Send + Sync>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<OwnedFd>(QUEUE);
        let pending = Arc::new(AtomicU64::new(0));
        let (p, g) = (pending.clone(), gauge.clone());
        std::thread::Builder::new().name("reuselb-closer".into()).spawn(move || {
            for fd in rx {
                abort_if_lingering(&fd);
                drop(fd);
                g(p.fetch_sub(1, Ordering::AcqRel) - 1);
            }
        })?;
        Ok(Self { tx: Some(tx), overflow: Vec::new(), pending, gauge })
    }

    /// Closes `fd` on the closer thread, soon. Never blocks.
    pub(super) fn close(&mut self, fd: OwnedFd) {
        let n = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        (self.gauge)(n);
        self.send(fd);
    }

    fn send(&mut self, fd: OwnedFd) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(fd) {
            Ok(()) => {}
            Err(TrySendError::Full(fd)) => self.overflow.push(fd),
            Err(TrySendError::Disconnected(fd)) => {
                // The thread is gone (it cannot be, short of a panic): close here, as before.
                drop(fd);
            }
        }
    }

    /// Retries the overflow list; called at every turn of the loop.
    pub(super) fn retry(&mut self) {
        if self.overflow.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.overflow);
        for fd in waiting {
            self.send(fd);
        }
    }

    /// Descriptors not closed yet.
    pub(super) fn backlog(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for everything handed over to be closed (at stop). What is still
    /// queued after that closes when (if) the closer thread gets to it.
    pub(super) fn finish(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.backlog() > 0 && Instant::now() < deadline {
            self.retry();
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.backlog() > 0 {
            log::warn!(
                "{} peer descriptors not closed yet after {limit:?}: left to the closing thread",
                self.backlog()
            );
            // The overflow gets a thread of its own; dropping the sender lets the closer
            // thread end when done.
            let overflow = std::mem::take(&mut self.overflow);
            if !overflow.is_empty() {
                let _ = std::thread::Builder::new()
                    .name("reuselb-closer".into())
                    .spawn(move || drop(overflow));
            }
        }
        self.tx = None;
    }
}
