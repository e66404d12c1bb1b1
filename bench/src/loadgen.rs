//! A small HTTP/1.0 load generator on one thread (epoll, non-blocking sockets), open or closed loop.
//!
//! Every request is a fresh connection (`GET path HTTP/1.0`, the server closes), as a browser or a
//! proxy without keep-alive makes them: the balancers under test place connections.
//!
//! - **Open loop** at a fixed offered rate: requests are *scheduled* as a Poisson process (seeded,
//!   so every configuration sees the same arrival times and the same request mix), and each one's
//!   latency runs from its **scheduled** send time, not from when the generator got round to it.
//!   A slow answer therefore never delays the next request, and a server that stalls is charged for
//!   every request that should have been sent meanwhile: no coordinated omission.
//! - **Closed loop** with `clients` connections in flight: each completion starts the next request;
//!   throughput is what completed within the window.
//!
//! - **Hold requests** (optional): a few extra requests of one path, each on its own connection,
//!   sent at fixed offsets from the start in either mode and counted apart (the blocked-worker
//!   workload's requests that hold the GIL for seconds).
//!
//! - **Noted requests** (optional, [`Spec::note_over`]): every ordinary request at or over a
//!   latency threshold, and every failed one, is kept whole in [`Outcome::noted`] (its scheduled
//!   send time, latency and serving pid), all of them, uncapped: what a stall caught.
//!
//! Everything is bounded: the run's length, the requests in flight (open loop), each request's
//! time, and the drain after the window. A request that fails, times out or could not be sent
//! counts as failed and as an infinitely slow one in the percentiles.
use std::{
    collections::HashMap,
    io,
    mem::size_of,
    net::{SocketAddr, SocketAddrV4},
    os::fd::RawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

/// Set by SIGINT/SIGTERM (see [`install_interrupt_handler`]): the generator stops with an error, so
/// the caller unwinds and its guards kill every server.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to [`INTERRUPTED`] instead of killing the process outright
/// (which would skip the Drop guards and leave servers running).
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// xorshift64*: a deterministic, seedable generator (the request mix and the arrival times).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `clients` requests always in flight.
    Closed { clients: usize },
    /// Poisson arrivals at `rate` requests per second.
    Open { rate: f64 },
}

/// One run of the generator.
pub struct Spec<'a> {
    pub addr: SocketAddr,
    /// The request paths there are, and for each request which one to send (given the mix RNG).
    pub paths: &'a [String],
    pub pick: &'a dyn Fn(&mut Rng) -> usize,
    pub mode: Mode,
    /// Requests are started during this window.
    pub duration: Duration,
    pub seed: u64,
    /// A request not answered within this time fails.
    pub timeout: Duration,
    /// Open loop: at most this many requests in flight; one more scheduled counts as failed.
    pub max_inflight: usize,
    /// After the window, wait at most this long for the requests still in flight.
    pub drain: Duration,
    /// Extra requests of path `hold_path`, each on its own connection, sent at these offsets
    /// from the start (open and closed loop alike); counted apart from the ordinary ones
    /// ([`Outcome::hold_us`]), never in the percentiles, the throughput or the per-worker shares.
    pub holds: &'a [Duration],
    pub hold_path: usize,
    /// If set, every ordinary request of the window whose latency is at or over this, and every
    /// failed one, is recorded in [`Outcome::noted`].
    pub note_over: Option<Duration>,
}

/// An ordinary request recorded because it was slow or failed (see [`Spec::note_over`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Noted {
    /// When it was scheduled (open loop) or started (closed loop).
    pub sent: Instant,
    /// Its latency in µs; `u32::MAX` if it failed.
    pub lat_us: u32,
    /// The worker that answered (`pid=` of the body); 0 if it failed.
    pub pid: u32,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Requests scheduled (open loop) or started (closed loop) within the window.
    pub started: u64,
    pub ok: u64,
    pub failed: u64,
    /// Closed loop: requests answered within the window (the throughput's numerator).
    pub ok_in_window: u64,
    /// Latency in µs of every request started in the window; failures are `u32::MAX`.
    pub latencies_us: Vec<u32>,
    /// Answers per serving worker (the `pid=` of the body).
    pub by_pid: HashMap<u32, u64>,
    pub window: Duration,
    /// Latency in µs of every hold request (see [`Spec::holds`]); failures are `u32::MAX`.
    pub hold_us: Vec<u32>,
    /// Largest number of requests in flight at once.
    pub peak_inflight: usize,
    /// Every ordinary request of the window at or over [`Spec::note_over`], and every failed one
    /// (empty without a threshold).
    pub noted: Vec<Noted>,
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ok_in_window as f64 / self.window.as_secs_f64()
    }

    /// Latency percentile in ms (`q` in [0, 1]); infinite if it falls on a failed request.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        percentile_ms(&self.latencies_us, q)
    }
}

/// `q`-quantile (nearest rank) of latencies in µs, in ms; `u32::MAX` (a failure) is infinite.
pub fn percentile_ms(lat: &[u32], q: f64) -> f64 {
    if lat.is_empty() {
        return f64::NAN;
    }
    let mut v = lat.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    match v[rank] {
        u32::MAX => f64::INFINITY,
        us => us as f64 / 1000.0,
    }
}

enum State {
    Connecting,
    Reading,
}

struct Conn {
    fd: RawFd,
    state: State,
    /// When the request was scheduled (open loop) or started (closed loop).
    intended: Instant,
    path: usize,
    buf: Vec<u8>,
    in_window: bool,
    /// A hold request (counted apart).
    hold: bool,
}

const TIMER: u64 = u64::MAX;

/// Runs the load described by `spec` and returns what it measured. Fails only on a local error
/// (epoll, timerfd, an interrupt); a failed request is a measurement.
pub fn run(spec: &Spec) -> Result<Outcome> {
    let SocketAddr::V4(v4) = spec.addr else { bail!("the load generator speaks IPv4 only") };
    let requests: Vec<Vec<u8>> = spec
        .paths
        .iter()
        .map(|p| {
            format!("GET {p} HTTP/1.0\r\nHost: {}\r\nUser-Agent: reuselb-bench\r\n\r\n", spec.addr)
                .into_bytes()
        })
        .collect();
    let mut gen = Gen::new(v4, requests, spec.note_over)?;
    gen.run(spec)
}

struct Gen {
    addr: libc::sockaddr_in,
    requests: Vec<Vec<u8>>,
    /// [`Spec::note_over`].
    note_over: Option<Duration>,
    epfd: RawFd,
    timerfd: RawFd,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    inflight: usize,
    out: Outcome,
}

impl Drop for Gen {
    fn drop(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            // SAFETY: our own descriptors, closed once.
            unsafe { libc::close(c.fd) };
        }
        // SAFETY: the timerfd and the epoll descriptor are Gen's own, closed once, here.
        unsafe {
            libc::close(self.timerfd);
            libc::close(self.epfd);
        }
    }
}

fn os_err(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", io::Error::last_os_error())
}

impl Gen {
    fn new(v4: SocketAddrV4, requests: Vec<Vec<u8>>, note_over: Option<Duration>) -> Result<Self> {
        // SAFETY: plain descriptor-creating calls; each result is checked and owned by Gen.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(os_err("epoll_create1"));
        }
        // SAFETY: timerfd_create takes no pointers; the result is checked and owned by Gen.
        let timerfd = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if timerfd < 0 {
            // SAFETY: epfd was just created here and is closed once on this error path.
            unsafe { libc::close(epfd) };
            return Err(os_err("timerfd_create"));
        }
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: TIMER };
        // SAFETY: epoll_ctl reads `ev`, a valid epoll_event; both fds are ours.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, timerfd, &mut ev) } < 0 {
            // SAFETY: both fds were just created here; closed once on this path.
            unsafe {
                libc::close(timerfd);
                libc::close(epfd);
            }
            return Err(os_err("epoll_ctl timerfd"));
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        Ok(Self {
            addr,
            requests,
            note_over,
            epfd,
            timerfd,
            conns: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            out: Outcome::default(),
        })
    }

    fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_micros(20));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: our timerfd, a valid itimerspec.
        unsafe { libc::timerfd_settime(self.timerfd, 0, &spec, std::ptr::null_mut()) };
    }

    /// Records an ordinary request of the window if a threshold is set and it is at or over it
    /// (a failure, `u32::MAX`, always is).
    fn note(&mut self, sent: Instant, lat_us: u32, pid: u32) {
        let Some(over) = self.note_over else { return };
        if lat_us as u128 >= over.as_micros() {
            self.out.noted.push(Noted { sent, lat_us, pid });
        }
    }

    /// A request scheduled at `intended` failed.
    fn fail(&mut self, intended: Instant, in_window: bool, hold: bool, msg: String) {
        if hold {
            self.out.hold_us.push(u32::MAX);
        } else if in_window {
            self.out.failed += 1;
            self.out.latencies_us.push(u32::MAX);
            self.note(intended, u32::MAX, 0);
        }
        if self.out.errors.len() < 8 {
            self.out.errors.push(msg);
        }
    }

    /// Starts one request scheduled at `intended`.
    fn launch(&mut self, intended: Instant, path: usize, in_window: bool, hold: bool) {
        if in_window && !hold {
            self.out.started += 1;
        }
        // SAFETY: socket/connect/epoll_ctl on a descriptor we own; the address is a valid sockaddr_in.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return self.fail(intended, in_window, hold, format!("socket: {e}"));
        }
        // SAFETY: connect reads `self.addr`, a valid sockaddr_in, with its exact size; fd is ours.
        let rc = unsafe {
            libc::connect(
                fd,
                (&self.addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                // SAFETY: fd was created above and is not stored anywhere: closed once.
                unsafe { libc::close(fd) };
                return self.fail(intended, in_window, hold, format!("connect: {e}"));
            }
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let mut ev = libc::epoll_event { events: libc::EPOLLOUT as u32, u64: slot as u64 };
        // SAFETY: epoll_ctl reads `ev`, a valid epoll_event on our stack; epfd and fd are ours.
        if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: fd is not registered anywhere yet: closed once.
            unsafe { libc::close(fd) };
            self.free.push(slot);
            return self.fail(intended, in_window, hold, format!("epoll_ctl: {e}"));
        }
        self.conns[slot] = Some(Conn {
            fd,
            state: State::Connecting,
            intended,
            path,
            buf: Vec::with_capacity(512),
            in_window,
            hold,
        });
        self.inflight += 1;
        self.out.peak_inflight = self.out.peak_inflight.max(self.inflight);
    }

    /// Closes the request in `slot`; `Ok(pid)` if it was answered.
    fn finish(
        &mut self,
        slot: usize,
        result: Result<u32, String>,
        now: Instant,
        window_end: Instant,
    ) {
        let c = self.conns[slot].take().expect("live slot");
        // SAFETY: our descriptor; closing also removes it from the epoll set.
        unsafe { libc::close(c.fd) };
        self.free.push(slot);
        self.inflight -= 1;
        match result {
            Ok(_) if c.hold => {
                let us = now.saturating_duration_since(c.intended).as_micros();
                self.out.hold_us.push(us.min(u32::MAX as u128 - 1) as u32);
            }
            Ok(pid) => {
                if c.in_window {
                    self.out.ok += 1;
                    let us = now
                        .saturating_duration_since(c.intended)
                        .as_micros()
                        .min(u32::MAX as u128 - 1) as u32;
                    self.out.latencies_us.push(us);
                    self.note(c.intended, us, pid);
                    *self.out.by_pid.entry(pid).or_default() += 1;
                    if now <= window_end {
                        self.out.ok_in_window += 1;
                    }
                }
            }
            Err(msg) => self.fail(c.intended, c.in_window, c.hold, msg),
        }
    }

    /// Handles readiness of `slot`; returns the outcome when the request is over.
    fn progress(&mut self, slot: usize, events: u32) -> Option<Result<u32, String>> {
        let req_len;
        let c = self.conns[slot].as_mut()?;
        match c.state {
            State::Connecting => {
                let mut err: libc::c_int = 0;
                let mut len = size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: SO_ERROR into an int on our socket.
                unsafe {
                    libc::getsockopt(
                        c.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if err != 0 {
                    return Some(Err(format!("connect: {}", io::Error::from_raw_os_error(err))));
                }
                if events & (libc::EPOLLOUT as u32) == 0 {
                    return Some(Err("connect: hang-up".into()));
                }
                let req = &self.requests[c.path];
                req_len = req.len();
                // SAFETY: writing our buffer to our socket.
                let n =
                    unsafe { libc::send(c.fd, req.as_ptr().cast(), req_len, libc::MSG_NOSIGNAL) };
                if n != req_len as isize {
                    return Some(Err(format!("send: {}", io::Error::last_os_error())));
                }
                c.state = State::Reading;
                let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: slot as u64 };
                // SAFETY: epoll_ctl reads `ev`, a valid epoll_event; c.fd is ours.
                if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, c.fd, &mut ev) } < 0 {
                    return Some(Err(format!("epoll_ctl: {}", io::Error::last_os_error())));
                }
                None
            }
            State::Reading => {
                let mut chunk = [0u8; 4096];
                loop {
                    // SAFETY: reading into a local buffer from our socket.
                    let n = unsafe { libc::recv(c.fd, chunk.as_mut_ptr().cast(), chunk.len(), 0) };
                    if n > 0 {
                        c.buf.extend_from_slice(&chunk[..n as usize]);
                        if c.buf.len() > 1 << 20 {
                            return Some(Err("answer longer than 1 MiB".into()));
                        }
                        continue;
                    }
                    if n == 0 {
                        return Some(parse_answer(&c.buf));
                    }
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => None,
                        io::ErrorKind::Interrupted => continue,
                        _ => Some(Err(format!("recv: {e}"))),
                    };
                }
            }
        }
    }

    fn run(&mut self, spec: &Spec) -> Result<Outcome> {
        let mut pace = Pace::new(spec);
        if let Mode::Closed { clients } = spec.mode {
            for _ in 0..clients {
                let p = (spec.pick)(&mut pace.mix);
                self.launch(pace.start, p, true, false);
            }
        }
        let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            check_interrupted()?;
            let now = Instant::now();
            if pace.sending && now >= pace.window_end {
                pace.sending = false;
            }
            self.send_due(&mut pace, now);
            if !pace.sending && self.inflight == 0 {
                break;
            }
            if now >= pace.hard_end {
                self.give_up(&pace, now);
                break;
            }
            // Time-outs: a sweep every 50 ms.
            if now.duration_since(pace.last_sweep) >= Duration::from_millis(50) {
                pace.last_sweep = now;
                self.sweep(&pace, now);
            }
            self.arm(pace.wake(now).saturating_duration_since(now));
            let Some(n) = self.wait(&mut events)? else { continue };
            for ev in &events[..n] {
                self.on_event(&mut pace, ev.u64, ev.events);
            }
        }
        self.out.window = spec.duration;
        Ok(std::mem::take(&mut self.out))
    }

    /// Starts the hold requests and (open loop) the arrivals that are due by `now`.
    fn send_due(&mut self, pace: &mut Pace, now: Instant) {
        let spec = pace.spec;
        while pace.sending
            && pace.next_hold < spec.holds.len()
            && pace.start + spec.holds[pace.next_hold] <= now
        {
            self.launch(pace.start + spec.holds[pace.next_hold], spec.hold_path, true, true);
            pace.next_hold += 1;
        }
        let (true, Mode::Open { rate }) = (pace.sending, spec.mode) else { return };
        while pace.next_send <= now && pace.next_send < pace.window_end {
            let p = (spec.pick)(&mut pace.mix);
            if self.inflight >= spec.max_inflight {
                self.out.started += 1;
                let msg = format!("over {} requests in flight", spec.max_inflight);
                self.fail(pace.next_send, true, false, msg);
            } else {
                self.launch(pace.next_send, p, true, false);
            }
            pace.next_send += Duration::from_secs_f64(pace.arrivals.exp(1.0 / rate));
        }
    }

    /// The drain is over: every request still in flight fails.
    fn give_up(&mut self, pace: &Pace, now: Instant) {
        let live: Vec<usize> = (0..self.conns.len()).filter(|&i| self.conns[i].is_some()).collect();
        for slot in live {
            self.finish(
                slot,
                Err(format!("still unanswered {:?} after the window", pace.spec.drain)),
                now,
                pace.window_end,
            );
        }
    }

    /// Every request unanswered for longer than the time-out fails.
    fn sweep(&mut self, pace: &Pace, now: Instant) {
        let timeout = pace.spec.timeout;
        let late: Vec<usize> = (0..self.conns.len())
            .filter(|&i| {
                self.conns[i].as_ref().is_some_and(|c| now.duration_since(c.intended) > timeout)
            })
            .collect();
        for slot in late {
            self.finish(slot, Err(format!("no answer within {timeout:?}")), now, pace.window_end);
        }
    }

    /// Waits for events (at most 1 s; the timer is armed for the next thing due); `None` if
    /// interrupted by a signal.
    fn wait(&self, events: &mut [libc::epoll_event]) -> Result<Option<usize>> {
        // SAFETY: epoll_wait into our event buffer.
        let n = unsafe {
            libc::epoll_wait(self.epfd, events.as_mut_ptr(), events.len() as libc::c_int, 1000)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            bail!("epoll_wait: {e}");
        }
        Ok(Some(n as usize))
    }

    /// One event: the timer's (drained), or a connection's progress; a request that ends in
    /// the window of a closed loop is followed by the next.
    fn on_event(&mut self, pace: &mut Pace, token: u64, flags: u32) {
        if token == TIMER {
            let mut buf = [0u8; 8];
            // SAFETY: draining the timerfd's expiry count.
            unsafe { libc::read(self.timerfd, buf.as_mut_ptr().cast(), 8) };
            return;
        }
        let slot = token as usize;
        let Some(result) = self.progress(slot, flags) else { return };
        let done = Instant::now();
        let holds_before = self.out.hold_us.len();
        self.finish(slot, result, done, pace.window_end);
        let was_hold = self.out.hold_us.len() > holds_before;
        if let (Mode::Closed { .. }, false) = (pace.spec.mode, was_hold) {
            if done < pace.window_end {
                let p = (pace.spec.pick)(&mut pace.mix);
                self.launch(done, p, true, false);
            }
        }
    }
}

/// Where one run stands: its spec, its random streams (the request mix and the open loop's
/// arrivals), its deadlines, and what it sends next.
struct Pace<'s> {
    spec: &'s Spec<'s>,
    mix: Rng,
    arrivals: Rng,
    start: Instant,
    /// Requests are started until then.
    window_end: Instant,
    /// Requests still in flight then fail.
    hard_end: Instant,
    /// Open loop: the next arrival.
    next_send: Instant,
    sending: bool,
    last_sweep: Instant,
    /// The next hold request, by index into [`Spec::holds`].
    next_hold: usize,
}

impl<'s> Pace<'s> {
    fn new(spec: &'s Spec<'s>) -> Self {
        let start = Instant::now();
        let window_end = start + spec.duration;
        Pace {
            spec,
            mix: Rng::new(spec.seed),
            arrivals: Rng::new(spec.seed ^ 0xA5A5_5A5A_DEAD_BEEF),
            start,
            window_end,
            hard_end: window_end + spec.drain,
            next_send: start,
            sending: true,
            last_sweep: start,
            next_hold: 0,
        }
    }

    /// When to look again: in 50 ms at the latest, or at the next arrival, hold request or the
    /// window's end while sending.
    fn wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_millis(50);
        if self.sending {
            if let Mode::Open { .. } = self.spec.mode {
                wake = wake.min(self.next_send);
            }
            if let Some(h) = self.spec.holds.get(self.next_hold) {
                wake = wake.min(self.start + *h);
            }
            wake = wake.min(self.window_end);
        }
        wake
    }
}

/// A 200 answer with `pid=N` in its body: N.
fn parse_answer(buf: &[u8]) -> Result<u32, String> {
    let text = String::from_utf8_lossy(buf);
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(format!("bad answer: {:?}", text.chars().take(60).collect::<String>()));
    }
    text.split("pid=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            format!("no pid in answer: {:?}", text.chars().take(100).collect::<String>())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_count_failures_as_infinite() {
        let mut v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), 500.0);
        assert_eq!(percentile_ms(&v, 0.99), 990.0);
        v[0] = u32::MAX;
        assert_eq!(percentile_ms(&v, 1.0), f64::INFINITY);
    }

    /// With a threshold, every ordinary request at or over it and every failure is noted whole
    /// (send time, latency, pid); a faster one is not, nor anything without a threshold.
    #[test]
    fn slow_and_failed_requests_are_noted_with_a_threshold() {
        let v4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9);
        let t = Instant::now();
        let mut gen = Gen::new(v4, Vec::new(), Some(Duration::from_millis(150))).unwrap();
        gen.note(t, 149_999, 7);
        gen.note(t, 150_000, 7);
        gen.fail(t, true, false, "refused".into());
        gen.fail(t, true, true, "a hold request".into());
        gen.fail(t, false, false, "after the window".into());
        let want = vec![
            Noted { sent: t, lat_us: 150_000, pid: 7 },
            Noted { sent: t, lat_us: u32::MAX, pid: 0 },
        ];
        assert_eq!(gen.out.noted, want);
        let mut none = Gen::new(v4, Vec::new(), None).unwrap();
        none.note(t, 400_000, 7);
        none.fail(t, true, false, "refused".into());
        assert!(none.out.noted.is_empty());
    }

    /// A whole run against a port nobody listens on: every request fails and is noted, at its
    /// scheduled send time.
    #[test]
    fn a_run_notes_its_failed_requests() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let paths = vec!["/".to_string()];
        let spec = Spec {
            addr: port,
            paths: &paths,
            pick: &|_| 0,
            mode: Mode::Open { rate: 200.0 },
            duration: Duration::from_millis(200),
            seed: 1,
            timeout: Duration::from_secs(1),
            max_inflight: 100,
            drain: Duration::from_secs(1),
            holds: &[],
            hold_path: 0,
            note_over: Some(Duration::from_millis(150)),
        };
        let before = Instant::now();
        let out = run(&spec).unwrap();
        assert!(out.failed > 0 && out.noted.len() as u64 == out.failed, "{out:?}");
        assert!(out.noted.iter().all(|n| n.lat_us == u32::MAX && n.pid == 0 && n.sent >= before));
    }

    #[test]
    fn parses_pid() {
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\npid=42 cpu=1\n"), Ok(42));
        assert!(parse_answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").is_err());
    }
}
