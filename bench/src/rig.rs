//! The bench rig: reuseport groups of listeners on 127.0.0.1 ("beds"), acceptor threads that
//! drain them, and a closed-loop client.
//!
//! Each connection is connect + accept + close. The acceptor closes its side first with
//! SO_LINGER 0 (an RST), and the client waits for that before it closes: no socket is left in
//! TIME_WAIT on either side, so tens of thousands of connections neither exhaust the ephemeral
//! ports nor grow the TIME_WAIT table (which would make later runs cost differently from
//! earlier ones). It also makes each connection a little cheaper than a FIN close, so the
//! program's share of the connection cost is, if anything, overstated.
use std::{
    io::{self, Read},
    mem::size_of,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use balancer_common::{Event, Policy};
use balancer_user::{listener::bind_reuseport, shared_loads::SharedLoads, Group, GroupOptions};

use crate::sk_pass::{RawInfo, SkPassProgram};

const BACKLOG: i32 = 1024;
/// How long the client waits for the server's close before calling the run broken.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What decides the socket of a new connection in a bed.
pub enum Selector {
    /// No program: the kernel's reuseport hash.
    KernelHash,
    /// The SK_PASS-only baseline program.
    SkPass(SkPassProgram),
    /// reuselb's group (its program attached).
    Group(Box<Group>),
}

/// One reuseport group of `listeners` on one port of 127.0.0.1.
pub struct Bed {
    pub addr: SocketAddr,
    pub listeners: Vec<TcpListener>,
    pub selector: Selector,
    /// Slot of each listener (index into `listeners`), for groups.
    pub slots: Vec<u32>,
    /// Connections accepted (and closed) so far, over all listeners.
    pub accepted: Arc<AtomicU64>,
    attached: bool,
}

impl Bed {
    pub fn workers(&self) -> usize {
        self.listeners.len()
    }

    pub fn group(&self) -> Option<&Group> {
        match &self.selector {
            Selector::Group(g) => Some(g),
            _ => None,
        }
    }

    pub fn group_mut(&mut self) -> Option<&mut Group> {
        match &mut self.selector {
            Selector::Group(g) => Some(g),
            _ => None,
        }
    }

    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        let addr = self.addr;
        let group = self.group_mut().ok_or_else(|| anyhow!("the bed on {addr} has no group"))?;
        if group.policy() != policy {
            group.set_policy(policy).context("setting the policy")?;
        }
        Ok(())
    }

    /// The program's cumulative (run time ns, run count), if a program is attached.
    pub fn prog_counters(&self) -> Result<Option<(u64, u64)>> {
        Ok(match &self.selector {
            Selector::KernelHash => None,
            Selector::SkPass(p) => {
                let RawInfo { run_time_ns, run_cnt, .. } = p.info()?;
                Some((run_time_ns, run_cnt))
            }
            Selector::Group(g) => {
                let info = g.program_info().context("reading the group program's info")?;
                Some((info.run_time().as_nanos() as u64, info.run_count()))
            }
        })
    }

    /// Selections summed over the group's slots (connections the program selected a slot for).
    pub fn assigned_total(&self) -> u64 {
        match self.group() {
            Some(g) => self.slots.iter().map(|&s| g.selected_total(s).unwrap_or(0)).sum(),
            None => 0,
        }
    }

    /// Group-wide fallback count (connections left to the kernel's hash by the program).
    pub fn fallbacks(&self) -> Result<u64> {
        match self.group() {
            Some(g) => Ok(g.stats().context("reading the group's statistics")?.fallbacks()),
            None => Ok(0),
        }
    }

    /// Group-wide count of selections the fast path made (an idle slot, no scan).
    pub fn fast_path(&self) -> Result<u64> {
        match self.group() {
            Some(g) => {
                Ok(g.stats().context("reading the group's statistics")?.get(Event::FastPath))
            }
            None => Ok(0),
        }
    }

    fn detach(&mut self) {
        if !self.attached {
            return;
        }
        let first = self.listeners[0].as_fd();
        let res = match &self.selector {
            Selector::KernelHash => Ok(()),
            Selector::SkPass(_) => SkPassProgram::detach(first),
            Selector::Group(_) => Group::detach(first).map_err(anyhow::Error::from),
        };
        if let Err(err) = res {
            eprintln!("warning: detaching the program from {}: {err:#}", self.addr);
        }
        self.attached = false;
    }
}

/// How a bed picks sockets, when it is created.
pub enum BedKind {
    KernelHash,
    SkPass,
    /// reuselb's group with this policy, loading the program(s) `Mode` says.
    Group(Policy, balancer_user::Mode),
}

/// Listeners bound to one port: the first to port 0, the others to the port it got.
fn bind_group(workers: usize) -> Result<(SocketAddr, Vec<TcpListener>)> {
    let first = bind_reuseport(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), BACKLOG)
        .context("binding a listener")?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(
            bind_reuseport(addr, BACKLOG)
                .with_context(|| format!("binding a listener to {addr}"))?,
        );
    }
    for l in &listeners {
        l.set_nonblocking(true)?;
    }
    Ok((addr, listeners))
}

impl Bed {
    pub fn new(kind: BedKind, workers: usize) -> Result<Self> {
        let (addr, listeners) = bind_group(workers)?;
        let mut bed = Bed {
            addr,
            listeners,
            selector: Selector::KernelHash,
            slots: Vec::new(),
            accepted: Arc::new(AtomicU64::new(0)),
            attached: false,
        };
        match kind {
            BedKind::KernelHash => {}
            BedKind::SkPass => {
                let prog = SkPassProgram::load()?;
                bed.selector = Selector::SkPass(prog);
                if let Selector::SkPass(p) = &bed.selector {
                    p.attach(bed.listeners[0].as_fd())?;
                }
                bed.attached = true;
            }
            BedKind::Group(policy, mode) => {
                let mut group = Group::new(GroupOptions { policy, mode, ..Default::default() })
                    .context("creating a balanced group (loading the eBPF program)")?;
                let pid = std::process::id();
                for l in &bed.listeners {
                    let (slot, _epoch) =
                        group.insert(l, pid, 1).context("putting a listener in a slot")?;
                    bed.slots.push(slot);
                }
                group.attach(bed.listeners[0].as_fd()).context("attaching the group's program")?;
                bed.selector = Selector::Group(Box::new(group));
                bed.attached = true;
            }
        }
        Ok(bed)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Detach first, then the listeners close (fields drop after this), then the program.
        self.detach();
    }
}

/// One listener as an acceptor thread sees it.
struct Entry {
    fd: RawFd,
    slot: u32,
    loads: Option<Arc<SharedLoads>>,
    accepted: Arc<AtomicU64>,
}

/// Acceptor threads, each draining its share of every bed's listeners with nonblocking accept,
/// woken by its own epoll.
pub struct Acceptors {
    stop: OwnedFd,
    threads: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

const STOP_TOKEN: u64 = u64::MAX;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Acceptors {
    /// Starts `threads` acceptors over all listeners of `beds` (listener i of a bed goes to thread
    /// i % threads). The beds must outlive the acceptors: stop them (drop) first.
    pub fn start(beds: &[Bed], threads: usize) -> Result<Self> {
        let mut entries = Vec::new();
        for bed in beds {
            let loads = match bed.group() {
                Some(g) => Some(Arc::new(
                    SharedLoads::map(g.loads_fd()).context("mapping the load array")?,
                )),
                None => None,
            };
            for (i, l) in bed.listeners.iter().enumerate() {
                entries.push(Entry {
                    fd: l.as_raw_fd(),
                    slot: bed.slots.get(i).copied().unwrap_or(u32::MAX),
                    loads: loads.clone(),
                    accepted: bed.accepted.clone(),
                });
            }
        }
        let entries = Arc::new(entries);
        // SAFETY: plain eventfd(2); owned right away.
        let stop = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?)
        };
        let error = Arc::new(Mutex::new(None));
        let mut acceptors = Acceptors { stop, threads: Vec::new(), error: error.clone() };
        for t in 0..threads {
            // SAFETY: plain epoll_create1(2); owned right away.
            let ep =
                unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            let add = |fd: RawFd, token: u64| -> io::Result<()> {
                let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
                // SAFETY: valid epoll fd, fd and event.
                cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })
                    .map(drop)
            };
            add(acceptors.stop.as_raw_fd(), STOP_TOKEN)?;
            let mut per_bed_index = 0usize;
            let mut last_accepted: Option<*const AtomicU64> = None;
            for (token, e) in entries.iter().enumerate() {
                // Index of the listener within its bed, so each bed spreads over the threads.
                if last_accepted != Some(Arc::as_ptr(&e.accepted)) {
                    per_bed_index = 0;
                    last_accepted = Some(Arc::as_ptr(&e.accepted));
                }
                if per_bed_index % threads == t {
                    add(e.fd, token as u64)?;
                }
                per_bed_index += 1;
            }
            let entries = entries.clone();
            let error = error.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bench-accept-{t}"))
                .spawn(move || {
                    if let Err(err) = accept_loop(ep, &entries) {
                        *error.lock().unwrap() = Some(format!("acceptor {t}: {err}"));
                    }
                })
                .context("spawning an acceptor thread")?;
            acceptors.threads.push(handle);
        }
        Ok(acceptors)
    }

    /// The first error an acceptor hit, if any.
    pub fn check(&self) -> Result<()> {
        match &*self.error.lock().unwrap() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
}

impl Drop for Acceptors {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our eventfd; level-triggered, so every thread sees it.
        unsafe { libc::write(self.stop.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(ep: OwnedFd, entries: &[Entry]) -> io::Result<()> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    loop {
        // SAFETY: valid epoll fd and event buffer.
        let n = unsafe {
            libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, -1)
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == STOP_TOKEN {
                return Ok(());
            }
            let e = &entries[token as usize];
            loop {
                // SAFETY: accept4 on a listening socket we keep open; no address wanted.
                let fd = unsafe {
                    libc::accept4(
                        e.fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    )
                };
                if fd < 0 {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                        _ => return Err(err),
                    }
                }
                if let Some(loads) = &e.loads {
                    loads.add_accepted(e.slot, 1);
                }
                // SAFETY: valid linger struct; then close the accepted socket (RST, no TIME_WAIT).
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const _ as *const libc::c_void,
                        size_of::<libc::linger>() as libc::socklen_t,
                    );
                    libc::close(fd);
                }
                if let Some(loads) = &e.loads {
                    loads.add_completed(e.slot, 1);
                }
                e.accepted.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// One closed-loop connection: connect, wait for the server to accept and close, close.
fn connect_once(addr: SocketAddr) -> Result<()> {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        // The acceptor can accept and reset the connection before connect(2) returns: an RST
        // answering the SYN would be ECONNREFUSED, so ECONNRESET here means established, accepted
        // and closed (and `drive` checks the acceptors' count anyway).
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("connect to {addr}")),
    };
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(_) => bail!("unexpected data from {addr}"),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            bail!("connection to {addr} not accepted and closed within {CLIENT_TIMEOUT:?}")
        }
        Err(e) => Err(e).with_context(|| format!("waiting for {addr} to close")),
    }
}

/// Makes `n` connections to `bed`, one after the other; returns the wall time of the loop.
/// Fails unless every connection was accepted by the bed's acceptors.
pub fn drive(bed: &Bed, acceptors: &Acceptors, n: u64) -> Result<Duration> {
    let base = bed.accepted.load(Ordering::Acquire);
    let start = Instant::now();
    for _ in 0..n {
        connect_once(bed.addr)?;
    }
    let elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        acceptors.check()?;
        let got = bed.accepted.load(Ordering::Acquire) - base;
        if got == n {
            break;
        }
        if got > n {
            bail!("{got} connections accepted on {} for {n} made", bed.addr);
        }
        if Instant::now() > deadline {
            bail!("only {got} of {n} connections accepted on {}", bed.addr);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(elapsed)
}

/// Like [`drive`], but the client opens `batch` connections back to back (nonblocking
/// connect(2), so the SYNs, and the program, run one right after the other), then waits for the
/// server to accept and close each of them. The program then sees a burst, with the caches as
/// warm as they get between two SYNs.
pub fn drive_burst(bed: &Bed, acceptors: &Acceptors, n: u64, batch: usize) -> Result<Duration> {
    let base = bed.accepted.load(Ordering::Acquire);
    let (storage, len) = balancer_user::listener::to_sockaddr(&bed.addr);
    let start = Instant::now();
    let mut left = n;
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(batch);
    while left > 0 {
        let k = (batch as u64).min(left);
        for _ in 0..k {
            // SAFETY: plain socket(2)/connect(2) on a fresh socket we own.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("socket");
            }
            // SAFETY: fd was just returned by socket(2), checked, and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: connect reads `storage`, filled for this address, up to `len`.
            let ret = unsafe {
                libc::connect(fd.as_raw_fd(), &storage as *const _ as *const libc::sockaddr, len)
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINPROGRESS) {
                    return Err(err).with_context(|| format!("connect to {}", bed.addr));
                }
            }
            fds.push(fd);
        }
        for fd in fds.drain(..) {
            // Wait for the server's RST (POLLIN/POLLERR/POLLHUP).
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll reads and writes one pollfd on our stack, for a descriptor we own.
            let ret = unsafe { libc::poll(&mut pfd, 1, CLIENT_TIMEOUT.as_millis() as i32) };
            if ret <= 0 {
                bail!(
                    "connection to {} not accepted and closed within {CLIENT_TIMEOUT:?}",
                    bed.addr
                );
            }
        }
        left -= k;
    }
    let elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        acceptors.check()?;
        let got = bed.accepted.load(Ordering::Acquire) - base;
        if got == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {got} of {n} connections accepted on {}", bed.addr);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(elapsed)
}
