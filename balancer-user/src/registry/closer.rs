//! Closing peer descriptors off the registry thread.
//!
//! Closing a descriptor a peer handed over can block: a TCP (or MPTCP) socket with
//! `SO_LINGER {1, t}` and unsent data waits up to `t` in `close()`, closing a unix socket with
//! messages still queued closes the descriptors those messages carry (in the closing thread,
//! with the same effect), and a file of a FUSE file system waits for its server. So the registry
//! never closes a peer's descriptor (a handed-over socket, the copy of a worker's listener, a
//! registration connection) itself: it gives it to this closer.
//!
//! Before closing, the closer defuses what it can ([`defuse`]): `SO_LINGER {1, 0}` on an
//! AF_INET or AF_INET6 stream socket that does not listen, whatever its protocol (TCP, MPTCP);
//! on a unix socket, it reads the queued messages (and accepts the pending connections of a
//! listening one) without waiting and defuses every descriptor they carry, recursively, within
//! bounds. What cannot be defused (a FUSE file, a queue deeper than the bounds) is left to the
//! watchdog: when every closer thread has been in one close for more than [`STUCK`], another
//! thread starts (at most [`MAX_THREADS`]), so the queue keeps moving.
//!
//! Invariants: [`Closer::close`] never blocks (a bounded queue, and an overflow list kept by the
//! caller's thread when the queue is full, retried at every turn); never `SO_LINGER` on a
//! listener (the connections it accepts would inherit it and be reset when the worker closes
//! them); a stuck close delays only other closes, never registration, departures or
//! reconciliation; [`Health::stalled`] says when descriptors wait and none has been taken up or
//! closed for a while (every thread stuck), which [`super::Registry::is_running`] reports.
//!
//! The closer also keeps the registry within a budget of descriptors ([`Closer::full`]): every
//! descriptor handed over and not closed yet (queued, in the overflow list, being closed) is
//! counted; from when the count reaches the budget (a quarter of the soft `RLIMIT_NOFILE` at
//! start) until it is back to half of it, the registry neither accepts nor reads registration
//! messages, so stalled closes cannot drive its descriptor table to the limit (where the kernel
//! would close the descriptors of a message inside `recvmsg`, and `accept` fails).
use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::sys;

/// How deep the closer follows descriptors carried by messages queued on unix sockets.
const DEFUSE_DEPTH: u32 = 4;
/// Messages read (or, on a listening unix socket, connections accepted) per unix socket at most.
const DEFUSE_MESSAGES: usize = 256;
/// Descriptors one close defuses at most, all levels together (the rest close as they are).
const DEFUSE_BUDGET: usize = 4096;
/// A close running longer than this counts as stuck: the watchdog starts another thread.
pub(super) const STUCK: Duration = Duration::from_secs(1);
/// Closer threads at most.
pub(super) const MAX_THREADS: usize = 8;

/// Makes closing `fd` abort rather than wait, as far as the kernel lets us: `SO_LINGER {1, 0}`
/// on an AF_INET or AF_INET6 stream socket that does not listen, whatever its protocol (MPTCP
/// lingers as TCP does; never on a listener: the sockets it accepts inherit the option, and a
/// worker's listener, which we hold a copy of, must keep closing its connections gracefully); on a unix socket, reads what is queued on it and defuses the descriptors carried,
/// which then close here, one by one.
fn defuse(fd: &OwnedFd, depth: u32, budget: &mut usize) {
    if !sys::is_unix_socket(fd.as_fd()) {
        if let Ok(f) = crate::listener::socket_facts(fd.as_fd()) {
            if f.inet_stream && !f.listening {
                let _ = sys::set_linger_zero(fd.as_fd());
            }
        }
        return;
    }
    if depth >= DEFUSE_DEPTH {
        return;
    }
    if sys::is_listening(fd.as_fd()).unwrap_or(false) {
        // Pending connections carry queues of their own. The accept must not wait: the file
        // is about to be closed, so making it non-blocking harms no one.
        if sys::set_nonblocking(fd.as_fd()).is_err() {
            return;
        }
        for _ in 0..DEFUSE_MESSAGES {
            let Ok(conn) = sys::accept(fd.as_fd()) else { return };
            defuse(&conn, depth + 1, budget);
        }
        return;
    }
    let mut buf = [0u8; 4096];
    for _ in 0..DEFUSE_MESSAGES {
        match sys::recv_with_fds(fd.as_fd(), &mut buf) {
            Ok(msg) if msg.len == 0 && msg.fds.is_empty() => return,
            Ok(msg) => {
                for carried in msg.fds {
                    if *budget == 0 {
                        return;
                    }
                    *budget -= 1;
                    defuse(&carried, depth + 1, budget);
                }
            }
            Err(_) => return,
        }
    }
}

/// The fewest descriptors the closer may hold before the registry stops reading (a limit below
/// four times this leaves the registry too little room otherwise).
const MIN_BUDGET: u64 = 16;

/// The budget of descriptors the closer may hold: a quarter of the soft `RLIMIT_NOFILE` now.
/// A quarter leaves the registry room for its own descriptors, its connections and workers, and
/// the descriptors of one message read past the budget (at most `SCM_MAX_FD`, 253).
fn budget() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one struct rlimit, which lives on this stack frame.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let soft = if r == 0 { lim.rlim_cur } else { 1024 };
    (soft / 4).max(MIN_BUDGET)
}

/// Descriptors queued for the closer threads at most; more wait in the overflow list.
const QUEUE: usize = 4096;

/// What the closer threads are doing, for the watchdog and the registry's health.
pub(super) struct Health {
    origin: Instant,
    /// Per thread: milliseconds since `origin`, plus one, when its current close began; 0: idle.
    busy: [AtomicU64; MAX_THREADS],
    threads: AtomicUsize,
    /// Milliseconds since `origin` when a descriptor was last taken up or closed, or when the
    /// closer had nothing waiting.
    progress_ms: AtomicU64,
    /// Handed over and not closed yet.
    pending: AtomicU64,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            busy: Default::default(),
            threads: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Threads in a close now, and how long the shortest of those closes has run.
    fn busy(&self) -> (u64, Option<Duration>) {
        let now = self.now_ms();
        let mut n = 0;
        let mut shortest: Option<u64> = None;
        for b in &self.busy[..self.threads.load(Ordering::Acquire)] {
            let since = b.load(Ordering::Acquire);
            if since > 0 {
                n += 1;
                let ran = now.saturating_sub(since - 1);
                shortest = Some(shortest.map_or(ran, |s| s.min(ran)));
            }
        }
        (n, shortest.map(Duration::from_millis))
    }

    /// Descriptors wait and none has been taken up or closed for `limit`: every closer thread is
    /// stuck, and what is queued behind stays open.
    pub(super) fn stalled(&self, limit: Duration) -> bool {
        let waiting = self.pending.load(Ordering::Acquire).saturating_sub(self.busy().0);
        let since = self.now_ms().saturating_sub(self.progress_ms.load(Ordering::Acquire));
        waiting > 0 && Duration::from_millis(since) >= limit
    }
}

pub(super) struct Closer {
    tx: Option<SyncSender<OwnedFd>>,
    rx: Arc<Mutex<Receiver<OwnedFd>>>,
    overflow: Vec<OwnedFd>,
    health: Arc<Health>,
    gauge: Arc<dyn Fn(u64) + Send + Sync>,
    /// Descriptors held above which the registry stops reading ([`Closer::full`]).
    budget: u64,
    /// The budget was reached and the backlog is not back to half of it yet.
    full: bool,
}

impl Closer {
    /// Starts the first closer thread. `gauge` is told the backlog after every change.
    pub(super) fn start(
        health: Arc<Health>,
        gauge: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<OwnedFd>(QUEUE);
        let mut closer = Self {
            tx: Some(tx),
            rx: Arc::new(Mutex::new(rx)),
            overflow: Vec::new(),
            health,
            gauge,
            budget: budget(),
            full: false,
        };
        closer.spawn()?;
        Ok(closer)
    }

    /// Starts one more closer thread.
    fn spawn(&mut self) -> std::io::Result<()> {
        let index = self.health.threads.load(Ordering::Acquire);
        if index >= MAX_THREADS {
            return Ok(());
        }
        let (rx, health, gauge) = (self.rx.clone(), self.health.clone(), self.gauge.clone());
        std::thread::Builder::new().name(format!("reuselb-closer{index}")).spawn(move || loop {
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(fd) = next else { return };
            health.busy[index].store(health.now_ms() + 1, Ordering::Release);
            health.progress();
            defuse(&fd, 0, &mut DEFUSE_BUDGET.clone());
            drop(fd);
            health.busy[index].store(0, Ordering::Release);
            health.progress();
            gauge(health.pending.fetch_sub(1, Ordering::AcqRel) - 1);
        })?;
        self.health.threads.store(index + 1, Ordering::Release);
        Ok(())
    }

    /// Closes `fd` on a closer thread, soon. Never blocks.
    pub(super) fn close(&mut self, fd: OwnedFd) {
        let before = self.health.pending.fetch_add(1, Ordering::AcqRel);
        if before <= self.health.busy().0 {
            // Nothing was waiting: the wait starts now.
            self.health.progress();
        }
        (self.gauge)(before + 1);
        self.send(fd);
    }

    fn send(&mut self, fd: OwnedFd) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(fd) {
            Ok(()) => {}
            Err(TrySendError::Full(fd)) => self.overflow.push(fd),
            Err(TrySendError::Disconnected(fd)) => {
                // The threads are gone (they cannot be, short of a panic): close here, as before.
                drop(fd);
            }
        }
    }

    /// Retries the overflow list and watches the closer threads; called at every turn of the
    /// loop: when every thread has been in one close for more than [`STUCK`], starts another.
    pub(super) fn retry(&mut self) {
        let threads = self.health.threads.load(Ordering::Acquire) as u64;
        if let (n, Some(shortest)) = self.health.busy() {
            if n == threads && shortest > STUCK && (threads as usize) < MAX_THREADS {
                log::warn!(
                    "closing a peer's descriptor has taken {shortest:?} on each of {n} closer \
                     threads: starting another"
                );
                if let Err(e) = self.spawn() {
                    log::warn!("starting a closer thread: {e}");
                }
            }
        }
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
        self.health.pending.load(Ordering::Acquire)
    }

    /// The budget of descriptors the closer may hold.
    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether the closer holds its budget: true from when the backlog reaches the budget until
    /// it is back to half of it (hysteresis: reading resumes with room for a while).
    pub(super) fn full(&mut self) -> bool {
        let held = self.backlog();
        if self.full {
            self.full = held > self.budget / 2;
        } else {
            self.full = held >= self.budget;
        }
        self.full
    }

    /// Waits up to `limit` for everything handed over to be closed (at stop). What is still
    /// queued after that closes when (if) a closer thread gets to it.
    pub(super) fn finish(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.backlog() > 0 && Instant::now() < deadline {
            self.retry();
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.backlog() > 0 {
            log::warn!(
                "{} peer descriptors not closed yet after {limit:?}: left to the closing threads",
                self.backlog()
            );
            // The overflow gets a thread of its own; dropping the sender lets the closer
            // threads end when done.
            let overflow = std::mem::take(&mut self.overflow);
            if !overflow.is_empty() {
                let _ =
                    std::thread::Builder::new().name("reuselb-closer".into()).spawn(move || {
                        let mut budget = DEFUSE_BUDGET;
                        for fd in overflow {
                            defuse(&fd, 0, &mut budget);
                        }
                    });
            }
        }
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd, unix::net::UnixDatagram},
    };

    use super::*;

    /// A connected TCP socket with unsent data and `SO_LINGER {1, secs}`, and what keeps it so.
    fn lingering(secs: i32) -> (TcpStream, TcpStream, TcpListener) {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (peer, _) = server.accept().unwrap();
        let small = socket2::SockRef::from(&peer);
        small.set_recv_buffer_size(4096).unwrap();
        socket2::SockRef::from(&client).set_send_buffer_size(4096).unwrap();
        client.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while (&client).write(&[0x55u8; 65536]).is_ok() {
            assert!(Instant::now() < deadline, "the send buffer never filled");
        }
        std::thread::sleep(Duration::from_millis(50));
        while (&client).write(&[0x55u8; 65536]).is_ok() {}
        socket2::SockRef::from(&client).set_linger(Some(Duration::from_secs(secs as u64))).unwrap();
        (client, peer, server)
    }

    /// `fd` inside `levels` unix sockets, each queued on the next: deeper than the closer reads.
    fn nested(fd: OwnedFd, levels: usize) -> (OwnedFd, Vec<UnixDatagram>) {
        let mut keep = Vec::new();
        let mut inner = fd;
        for _ in 0..levels {
            let (a, b) = UnixDatagram::pair().unwrap();
            sys::send_with_fd(b.as_fd(), b"x", Some(inner.as_fd())).unwrap();
            keep.push(b);
            inner = OwnedFd::from(a);
        }
        (inner, keep)
    }

    #[test]
    fn a_stuck_close_gets_another_thread() {
        let health = Arc::new(Health::new());
        let mut closer = Closer::start(health.clone(), Arc::new(|_| {})).unwrap();
        let (client, _peer, _server) = lingering(4);
        let (stuck, _keep) = nested(OwnedFd::from(client), DEFUSE_DEPTH as usize + 1);
        closer.close(stuck);
        std::thread::sleep(Duration::from_millis(200));
        // Behind it, a socket whose close we can see: its peer reads the end.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        closer.close(OwnedFd::from(a));
        b.set_nonblocking(true).unwrap();
        let started = Instant::now();
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(3) {
            closer.retry();
            let mut buf = [0u8; 1];
            // SAFETY: reads into a local buffer from a descriptor we own.
            let n = unsafe { libc::recv(b.as_raw_fd(), buf.as_mut_ptr().cast(), 1, 0) };
            if n == 0 {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(closed, "the close queued behind a stuck one did not happen within 3 s");
        assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
        assert_eq!(health.threads.load(Ordering::Acquire), 2, "the watchdog started no thread");
        assert!(!health.stalled(Duration::from_millis(500)), "nothing waits: not stalled");
        // The stuck close was stuck: still under way.
        assert_eq!(closer.backlog(), 1, "the nested lingering socket closed at once");
        closer.finish(Duration::from_secs(6));
    }
}
