//! `libbalancer_shim.so`: preloaded (LD_PRELOAD) into a prefork app server (uWSGI, gunicorn) so
//! that each worker gets its own SO_REUSEPORT listening socket, registers it with the reuselb
//! controller, and keeps the shared load map current with no system call added per request.
//!
//! What it does, per process:
//! - `bind` to a balanced address (`REUSELB_LISTEN`): sets SO_REUSEADDR and SO_REUSEPORT first, so
//!   the workers' own sockets can bind the same port later; `listen` records the backlog.
//! - Socket split: before the process first waits on (`epoll_ctl` ADD, `poll`, `select`) or
//!   accepts (`accept`, `accept4`) from an inherited listening socket of a balanced address, it
//!   creates its own socket on that address and `dup3`s it over the same descriptor number (flags
//!   and backlog kept). The original socket (shared by the master and every worker through fork) is
//!   shut down, which takes it out of the reuseport group: its queue moves to the workers' sockets
//!   and nobody waits there with no one accepting. Once per process; processes that never
//!   wait/accept (master, mules, spooler) never split.
//! - A background thread registers each own socket with the controller (`REUSELB_SOCKET`), maps
//!   the load array it gets back and retries every second while the controller is absent or gone.
//! - Accounting: `accept`/`accept4` on an own socket marks the new descriptor and adds 1 to the
//!   slot's `accepted`; closing a marked descriptor (`close`, `dup2`/`dup3` over it, `close_range`)
//!   adds 1 to `completed`. Plain atomic adds on shared memory.
//!
//! Rules kept here: no panic crosses the C boundary (the hooks do no indexing that can fail and
//! the slow paths run under `catch_unwind`), the hooks never allocate or take a blocking lock, and
//! every piece of per-process state is tagged with the pid so that what fork copies is never
//! mistaken for the child's own.
#![allow(clippy::missing_safety_doc)]

use core::{
    ffi::{c_char, c_int, c_uint, c_void},
    fmt::{self, Write as _},
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
    ptr,
    sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};
use std::cell::UnsafeCell;

use balancer_common::{
    protocol::{self, Register, Reply, Status},
    table_offsets, LOADS_MMAP_LEN,
};

// ---------------------------------------------------------------------------------------------
// Configuration (read once in the constructor, before any other thread can exist)

/// Most balanced addresses one process handles.
const MAX_ADDRS: usize = 16;
/// Descriptors below this number are tracked (cached classification, connection marks).
const MAX_FDS: usize = 65536;
/// Backlog of an own socket when the original's `listen` was not seen.
const DEFAULT_BACKLOG: c_int = 128;

struct Config {
    addrs: [Option<SocketAddr>; MAX_ADDRS],
    n_addrs: usize,
    socket_path: [u8; 108],
    socket_path_len: usize,
    weight: u32,
}

struct ConfigCell(UnsafeCell<Config>);
// SAFETY: written only by the constructor, before the program's own code runs; read-only after.
unsafe impl Sync for ConfigCell {}

static CONFIG: ConfigCell = ConfigCell(UnsafeCell::new(Config {
    addrs: [None; MAX_ADDRS],
    n_addrs: 0,
    socket_path: [0; 108],
    socket_path_len: 0,
    // 0: not asked (REUSELB_WEIGHT unset): the controller gives the service's default weight.
    weight: 0,
}));

fn config() -> &'static Config {
    // SAFETY: see ConfigCell.
    unsafe { &*CONFIG.0.get() }
}

// ---------------------------------------------------------------------------------------------
// The real functions, found with dlsym(RTLD_NEXT)

macro_rules! real {
    ($slot:ident, $name:literal, $ty:ty) => {
        static $slot: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
        impl Real {
            #[allow(non_snake_case)]
            #[inline(always)]
            fn $slot() -> $ty {
                let mut p = $slot.load(Ordering::Relaxed);
                if p.is_null() {
                    // SAFETY: dlsym with a NUL-terminated name.
                    p = unsafe {
                        libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast())
                    };
                    if p.is_null() {
                        // Without the real function nothing can work; make the failure obvious.
                        unsafe { libc::abort() };
                    }
                    $slot.store(p, Ordering::Relaxed);
                }
                // SAFETY: the symbol has this C signature.
                unsafe { core::mem::transmute::<*mut c_void, $ty>(p) }
            }
        }
    };
}

struct Real;
real!(SOCKET, "socket", unsafe extern "C" fn(c_int, c_int, c_int) -> c_int);
real!(BIND, "bind", unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int);
real!(LISTEN, "listen", unsafe extern "C" fn(c_int, c_int) -> c_int);
real!(
    ACCEPT,
    "accept",
    unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int
);
real!(
    ACCEPT4,
    "accept4",
    unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int
);
real!(
    EPOLL_CTL,
    "epoll_ctl",
    unsafe extern "C" fn(c_int, c_int, c_int, *mut libc::epoll_event) -> c_int
);
real!(POLL, "poll", unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int);
real!(
    SELECT,
    "select",
    unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::timeval,
    ) -> c_int
);
real!(CLOSE, "close", unsafe extern "C" fn(c_int) -> c_int);
real!(DUP2, "dup2", unsafe extern "C" fn(c_int, c_int) -> c_int);
real!(DUP3, "dup3", unsafe extern "C" fn(c_int, c_int, c_int) -> c_int);

type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
static CLOSE_RANGE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

unsafe fn real_close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let mut p = CLOSE_RANGE.load(Ordering::Relaxed);
    if p.is_null() {
        p = libc::dlsym(libc::RTLD_NEXT, c"close_range".as_ptr());
        if p.is_null() {
            return libc::syscall(libc::SYS_close_range, first, last, flags) as c_int;
        }
        CLOSE_RANGE.store(p, Ordering::Relaxed);
    }
    core::mem::transmute::<*mut c_void, CloseRangeFn>(p)(first, last, flags)
}

// ---------------------------------------------------------------------------------------------
// Per-process state

/// This process's pid; updated in the child after fork (pthread_atfork).
static MY_PID: AtomicU32 = AtomicU32::new(0);

#[inline(always)]
fn my_pid() -> u32 {
    MY_PID.load(Ordering::Relaxed)
}

/// What a descriptor is, cached per fd: `pid << 32 | state << 8 | address index`. An entry whose
/// pid is not ours (copied by fork, or 0) means "unknown".
static FDS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];

const ST_NOT_BALANCED: u64 = 1;
const ST_SPLITTING: u64 = 2;
const ST_SPLIT: u64 = 3;
const ST_SPLIT_FAILED: u64 = 4;

#[inline(always)]
fn entry(pid: u32, state: u64, idx: usize) -> u64 {
    ((pid as u64) << 32) | (state << 8) | (idx as u64 & 0xff)
}

/// Accepted connections of a registered own socket: `seq << 8 | (address index + 1)`, 0 if none.
static CONNS: [AtomicU32; MAX_FDS] = [const { AtomicU32::new(0) }; MAX_FDS];

/// Backlog seen in `listen` per balanced address (survives fork, on purpose).
static BACKLOG: [AtomicI32; MAX_ADDRS] = [const { AtomicI32::new(0) }; MAX_ADDRS];

/// This process's own socket per balanced address: `pid << 32 | fd`, or 0.
static OWN_FD: [AtomicU64; MAX_ADDRS] = [const { AtomicU64::new(0) }; MAX_ADDRS];

/// Registration of one own socket. `state` is `seq << 1 | active`; the other fields are written
/// before `state` turns active (Release) and read after it is seen active (Acquire).
struct Registration {
    state: AtomicU32,
    base: AtomicPtr<u8>,
    slot: AtomicU32,
    epoch: AtomicU64,
    /// Kernel id of the load map (0: unknown), to tell a re-registration into the same slot of
    /// the same map (a restarted controller that adopted the pinned map) from a new one.
    map_id: AtomicU32,
}

static REGS: [Registration; MAX_ADDRS] = [const {
    Registration {
        state: AtomicU32::new(0),
        base: AtomicPtr::new(ptr::null_mut()),
        slot: AtomicU32::new(0),
        epoch: AtomicU64::new(0),
        map_id: AtomicU32::new(0),
    }
}; MAX_ADDRS];

/// pid of the process whose registration thread runs (0: none).
static THREAD_PID: AtomicU32 = AtomicU32::new(0);

impl Registration {
    /// Marks the registration inactive (new sequence number, so old marks stop counting).
    fn deactivate(&self) {
        let s = self.state.load(Ordering::Relaxed);
        self.state.store(((s >> 1).wrapping_add(1)) << 1, Ordering::Release);
    }

    /// The counter at `offset` of our slot, if registered and the slot is still ours.
    #[inline(always)]
    /// Returns the registration's sequence number (24 bits, as stored in connection marks) too;
    /// `want_seq` restricts to that registration.
    fn counter(
        &self,
        want_seq: Option<u32>,
        field: fn(usize) -> usize,
    ) -> Option<(u32, &'static AtomicU64)> {
        let s = self.state.load(Ordering::Acquire);
        let seq = (s >> 1) & 0xff_ffff;
        if s & 1 == 0 || want_seq.is_some_and(|w| w != seq) {
            return None;
        }
        let base = self.base.load(Ordering::Relaxed);
        if base.is_null() {
            return None;
        }
        let slot = self.slot.load(Ordering::Relaxed) as usize;
        if slot >= balancer_common::MAX_SLOTS as usize {
            return None;
        }
        // SAFETY: the mapping covers the whole table and is never unmapped while the process
        // lives; the counters are 8-aligned and only accessed atomically.
        let epoch = unsafe { AtomicU64::from_ptr(base.add(table_offsets::epoch(slot)).cast()) };
        if epoch.load(Ordering::Relaxed) != self.epoch.load(Ordering::Relaxed) {
            return None;
        }
        Some((seq, unsafe { AtomicU64::from_ptr(base.add(field(slot)).cast()) }))
    }
}

// ---------------------------------------------------------------------------------------------
// Logging without allocation

struct StackBuf {
    buf: [u8; 512],
    len: usize,
}

impl fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn log(args: fmt::Arguments<'_>) {
    let mut b = StackBuf { buf: [0; 512], len: 0 };
    let _ = write!(b, "reuselb-shim[{}]: ", my_pid());
    let _ = b.write_fmt(args);
    if b.len == b.buf.len() {
        b.len -= 1;
    }
    b.buf[b.len] = b'\n';
    // SAFETY: writes our own buffer to stderr.
    unsafe { libc::write(2, b.buf.as_ptr().cast(), b.len + 1) };
}

macro_rules! shim_log {
    ($($t:tt)*) => { log(format_args!($($t)*)) };
}

// ---------------------------------------------------------------------------------------------
// Constructor and fork handling

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    MY_PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    // SAFETY: single-threaded constructor; see ConfigCell.
    let cfg = unsafe { &mut *CONFIG.0.get() };
    if let Some(list) = env_str(protocol::ENV_LISTEN) {
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<SocketAddr>() {
                Ok(a) if cfg.n_addrs < MAX_ADDRS => {
                    cfg.addrs[cfg.n_addrs] = Some(a);
                    cfg.n_addrs += 1;
                }
                Ok(_) => shim_log!("more than {MAX_ADDRS} balanced addresses; ignoring {part}"),
                Err(_) => shim_log!("{}: not an ADDR:PORT: {part}", protocol::ENV_LISTEN),
            }
        }
    }
    let path = env_str(protocol::ENV_SOCKET)
        .filter(|p| !p.is_empty())
        .unwrap_or(protocol::DEFAULT_SOCKET_PATH);
    if path.len() < cfg.socket_path.len() {
        cfg.socket_path[..path.len()].copy_from_slice(path.as_bytes());
        cfg.socket_path_len = path.len();
    } else {
        shim_log!("{}: path too long for a unix socket", protocol::ENV_SOCKET);
    }
    if let Some(w) = env_str("REUSELB_WEIGHT").and_then(|w| w.trim().parse::<u32>().ok()) {
        cfg.weight = w.max(1);
    }
    // Resolve the real functions now, while nothing else runs (dlsym may allocate).
    let _ = (Real::SOCKET(), Real::BIND(), Real::LISTEN(), Real::ACCEPT(), Real::ACCEPT4());
    let _ = (
        Real::EPOLL_CTL(),
        Real::POLL(),
        Real::SELECT(),
        Real::CLOSE(),
        Real::DUP2(),
        Real::DUP3(),
    );
    unsafe {
        let p = libc::dlsym(libc::RTLD_NEXT, c"close_range".as_ptr());
        CLOSE_RANGE.store(p, Ordering::Relaxed);
        libc::pthread_atfork(None, None, Some(after_fork_child));
    }
}

fn env_str(name: &str) -> Option<&'static str> {
    let mut buf = [0u8; 64];
    let n = name.len().min(63);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: NUL-terminated name; getenv's result lives as long as the environment entry, which
    // nobody changes during the constructor; we only keep it for parsing there (and the path is
    // copied).
    let p = unsafe { libc::getenv(buf.as_ptr() as *const c_char) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { core::ffi::CStr::from_ptr(p) };
    s.to_str().ok()
}

extern "C" fn after_fork_child() {
    MY_PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    THREAD_PID.store(0, Ordering::Relaxed);
    for r in &REGS {
        r.deactivate();
    }
    for c in &CONN_FDS {
        let fd = c.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // The parent's connections to the controller are not ours.
            unsafe { Real::CLOSE()(fd) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classification and split

fn sockname(fd: c_int) -> Option<SocketAddr> {
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) }
        != 0
    {
        return None;
    }
    from_storage(&ss)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as c_int {
        libc::AF_INET => {
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((sin.sin_addr.s_addr.to_ne_bytes(), u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

fn addr_index(addr: &SocketAddr) -> Option<usize> {
    let cfg = config();
    let same = |a: &SocketAddr| a.port() == addr.port() && ip_eq(a.ip(), addr.ip());
    cfg.addrs[..cfg.n_addrs].iter().position(|a| a.as_ref().is_some_and(same))
}

fn ip_eq(a: IpAddr, b: IpAddr) -> bool {
    a == b
}

fn int_opt(fd: c_int, level: c_int, opt: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(v)
}

fn set_int_opt(fd: c_int, level: c_int, opt: c_int, v: c_int) -> bool {
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const c_int).cast(),
            size_of::<c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// The balanced address index of `fd` if it is a (possibly shut down) listening TCP socket on a
/// balanced address. Accepted connections share the local address: they have a peer.
fn classify(fd: c_int) -> Option<usize> {
    if config().n_addrs == 0 {
        return None;
    }
    let idx = addr_index(&sockname(fd)?)?;
    if int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return None;
    }
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) }
        == 0
    {
        return None;
    }
    Some(idx)
}

/// Makes sure `fd`, if it is an inherited listener of a balanced address, has been replaced by
/// this process's own socket. Fast path: one atomic load.
#[inline(always)]
fn ensure_split(fd: c_int) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let e = FDS[fd as usize].load(Ordering::Acquire);
    if (e >> 32) as u32 == my_pid() && (e >> 8) & 0xff != ST_SPLITTING {
        return;
    }
    let _ = std::panic::catch_unwind(|| ensure_split_slow(fd));
}

#[cold]
fn ensure_split_slow(fd: c_int) {
    let slot = &FDS[fd as usize];
    let pid = my_pid();
    loop {
        let e = slot.load(Ordering::Acquire);
        if (e >> 32) as u32 == pid {
            if (e >> 8) & 0xff == ST_SPLITTING {
                // Another thread of this process is splitting this socket: wait for it.
                unsafe { libc::sched_yield() };
                continue;
            }
            return;
        }
        let Some(idx) = classify(fd) else {
            let _ = slot.compare_exchange(
                e,
                entry(pid, ST_NOT_BALANCED, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            return;
        };
        if slot
            .compare_exchange(e, entry(pid, ST_SPLITTING, idx), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let ok = split(fd, idx);
        slot.store(entry(pid, if ok { ST_SPLIT } else { ST_SPLIT_FAILED }, idx), Ordering::Release);
        if ok {
            OWN_FD[idx].store(((pid as u64) << 32) | fd as u64, Ordering::Release);
            start_thread();
        }
        return;
    }
}

/// Replaces the inherited listener at `fd` with this process's own socket on the same address.
fn split(fd: c_int, idx: usize) -> bool {
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) }
        != 0
    {
        return false;
    }
    let family = ss.ss_family as c_int;
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fl < 0 || fdfl < 0 {
        return false;
    }
    let new = unsafe { Real::SOCKET()(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if new < 0 {
        shim_log!("split of fd {fd}: socket: {}", errno());
        return false;
    }
    let fail = |what: &str| {
        shim_log!("split of fd {fd}: {what}: {}; this process keeps the shared socket", errno());
        unsafe { Real::CLOSE()(new) };
        false
    };
    set_int_opt(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if !set_int_opt(new, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1) {
        return fail("SO_REUSEPORT");
    }
    if family == libc::AF_INET6 {
        let v6only = int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0);
        set_int_opt(new, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only);
    }
    // Options that accepted connections inherit from their listener.
    for (level, opt) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    ] {
        if let Some(v) = int_opt(fd, level, opt) {
            if v != 0 {
                set_int_opt(new, level, opt, v);
            }
        }
    }
    if unsafe { Real::BIND()(new, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return fail("bind (was the original socket bound without SO_REUSEPORT?)");
    }
    let backlog = match BACKLOG[idx].load(Ordering::Relaxed) {
        b if b > 0 => b,
        _ => DEFAULT_BACKLOG,
    };
    if unsafe { Real::LISTEN()(new, backlog) } != 0 {
        return fail("listen");
    }
    if fl & libc::O_NONBLOCK != 0
        && unsafe { libc::fcntl(new, libc::F_SETFL, libc::O_NONBLOCK) } != 0
    {
        return fail("O_NONBLOCK");
    }
    // Take the shared original out of the reuseport group (in every process: the open file is
    // shared). Its queued connections move to the workers' sockets; later workers inherit it dead
    // and still split. ENOTCONN: an earlier worker already did it.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    let cloexec = if fdfl & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    if unsafe { Real::DUP3()(new, fd, cloexec) } < 0 {
        return fail("dup3");
    }
    unsafe { Real::CLOSE()(new) };
    if let Some(addr) = config().addrs[idx] {
        shim_log!("own listening socket on {addr} (fd {fd}, backlog {backlog})");
    }
    true
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

// ---------------------------------------------------------------------------------------------
// Accounting

#[inline(always)]
fn on_accepted(listener: c_int, conn: c_int) {
    if conn < 0 || conn as usize >= MAX_FDS {
        return;
    }
    let pid = my_pid();
    // A descriptor number that comes back from accept is a fresh connection.
    forget_fd(conn);
    FDS[conn as usize].store(entry(pid, ST_NOT_BALANCED, 0), Ordering::Relaxed);
    if listener < 0 || listener as usize >= MAX_FDS {
        return;
    }
    let e = FDS[listener as usize].load(Ordering::Relaxed);
    if (e >> 32) as u32 != pid || (e >> 8) & 0xff != ST_SPLIT {
        return;
    }
    let idx = (e & 0xff) as usize;
    if cfg!(feature = "broken-no-count") {
        return; // `cargo xtask prove` only: nothing accepted or completed is counted.
    }
    let Some(reg) = REGS.get(idx) else { return };
    if let Some((seq, c)) = reg.counter(None, table_offsets::accepted) {
        c.fetch_add(1, Ordering::Relaxed);
        CONNS[conn as usize].store((seq << 8) | (idx as u32 + 1), Ordering::Relaxed);
    }
}

/// `fd` is being closed or replaced: clear what we know of it, count a completion if it was an
/// accepted connection of a registered socket.
#[inline(always)]
fn forget_fd(fd: c_int) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let i = fd as usize;
    if FDS[i].load(Ordering::Relaxed) != 0 {
        FDS[i].store(0, Ordering::Relaxed);
    }
    if CONNS[i].load(Ordering::Relaxed) != 0 {
        let m = CONNS[i].swap(0, Ordering::Relaxed);
        if m != 0 {
            let idx = ((m & 0xff) as usize).wrapping_sub(1);
            if let Some(reg) = REGS.get(idx) {
                // Only count if the registration that counted the accept is still the current one.
                let seq = Some(m >> 8);
                if let Some((_, c)) = reg.counter(seq, table_offsets::completed) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if let Some((_, c)) = reg.counter(seq, table_offsets::inflight) {
                    c.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The hooks

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let fd = Real::SOCKET()(domain, ty, protocol);
    forget_fd(fd);
    fd
}

#[no_mangle]
pub unsafe extern "C" fn bind(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    if !addr.is_null() && config().n_addrs > 0 {
        let _ = std::panic::catch_unwind(|| prepare_bind(fd, addr, len));
    }
    Real::BIND()(fd, addr, len)
}

fn prepare_bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let n = (len as usize).min(size_of::<libc::sockaddr_storage>());
    unsafe {
        ptr::copy_nonoverlapping(
            addr.cast::<u8>(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        )
    };
    let Some(a) = from_storage(&ss) else { return };
    if addr_index(&a).is_none()
        || int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return;
    }
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if config().n_addrs > 0 {
        let _ = std::panic::catch_unwind(|| {
            if let Some(idx) = sockname(fd).and_then(|a| addr_index(&a)) {
                BACKLOG[idx].store(backlog, Ordering::Relaxed);
            }
        });
    }
    Real::LISTEN()(fd, backlog)
}

#[no_mangle]
pub unsafe extern "C" fn accept(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> c_int {
    ensure_split(fd);
    let c = Real::ACCEPT()(fd, addr, len);
    if c >= 0 {
        on_accepted(fd, c);
    }
    c
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    ensure_split(fd);
    let c = Real::ACCEPT4()(fd, addr, len, flags);
    if c >= 0 {
        on_accepted(fd, c);
    }
    c
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut libc::epoll_event,
) -> c_int {
    if op == libc::EPOLL_CTL_ADD {
        ensure_split(fd);
    }
    Real::EPOLL_CTL()(epfd, op, fd, event)
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    if !fds.is_null() {
        for i in 0..nfds as usize {
            let p = &*fds.add(i);
            if p.events & libc::POLLIN != 0 {
                ensure_split(p.fd);
            }
        }
    }
    Real::POLL()(fds, nfds, timeout)
}

#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    if !readfds.is_null() {
        for fd in 0..nfds.clamp(0, libc::FD_SETSIZE as c_int) {
            if libc::FD_ISSET(fd, readfds) {
                ensure_split(fd);
            }
        }
    }
    Real::SELECT()(nfds, readfds, writefds, exceptfds, timeout)
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget_fd(fd);
    Real::CLOSE()(fd)
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old != new {
        forget_fd(new);
    }
    Real::DUP2()(old, new)
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old != new {
        forget_fd(new);
    }
    Real::DUP3()(old, new, flags)
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // A vfork child shares our memory and must not touch the parent's marks: close_range is rare
    // enough to afford the getpid that tells.
    if flags as c_uint & libc::CLOSE_RANGE_CLOEXEC == 0 && libc::getpid() as u32 == my_pid() {
        let end = (last as u64).min(MAX_FDS as u64 - 1);
        let mut fd = first as u64;
        while fd <= end {
            forget_fd(fd as c_int);
            fd += 1;
        }
    }
    real_close_range(first, last, flags)
}

// ---------------------------------------------------------------------------------------------
// Registration thread

/// Connection to the controller per balanced address (this process's; -1 if none).
static CONN_FDS: [AtomicI32; MAX_ADDRS] = [const { AtomicI32::new(-1) }; MAX_ADDRS];
static NEXT_RETRY_MS: [AtomicUsize; MAX_ADDRS] = [const { AtomicUsize::new(0) }; MAX_ADDRS];
/// Set once a "controller not reachable" line was logged (per process, reset after registration).
static SAID_UNREACHABLE: AtomicBool = AtomicBool::new(false);

fn start_thread() {
    let pid = my_pid();
    if THREAD_PID.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    if config().socket_path_len == 0 {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("reuselb-shim".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _ = std::panic::catch_unwind(|| registration_loop(pid));
        });
    if let Err(e) = spawned {
        THREAD_PID.store(0, Ordering::Release);
        shim_log!("cannot start the registration thread: {e}");
    }
}

fn now_ms() -> usize {
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as usize * 1000 + ts.tv_nsec as usize / 1_000_000
}

fn registration_loop(pid: u32) {
    loop {
        if my_pid() != pid || THREAD_PID.load(Ordering::Acquire) != pid {
            return;
        }
        let n = config().n_addrs;
        let mut pfds: [libc::pollfd; MAX_ADDRS] = unsafe { zeroed() };
        let mut which = [0usize; MAX_ADDRS];
        let mut np = 0;
        for idx in 0..n {
            let own = OWN_FD[idx].load(Ordering::Acquire);
            if own >> 32 != pid as u64 {
                continue;
            }
            let conn = CONN_FDS[idx].load(Ordering::Acquire);
            if conn < 0 {
                if now_ms() >= NEXT_RETRY_MS[idx].load(Ordering::Relaxed) {
                    let retry_in = match register(idx, (own & 0xffff_ffff) as c_int, pid) {
                        Ok(()) => 0,
                        Err(RegisterError::Unreachable) => 1000,
                        Err(RegisterError::Rejected) => 5000,
                    };
                    NEXT_RETRY_MS[idx].store(now_ms() + retry_in, Ordering::Relaxed);
                }
                continue;
            }
            pfds[np] = libc::pollfd { fd: conn, events: libc::POLLIN, revents: 0 };
            which[np] = idx;
            np += 1;
        }
        let r = unsafe { Real::POLL()(pfds.as_mut_ptr(), np as libc::nfds_t, 1000) };
        if r <= 0 {
            if np == 0 {
                // poll with nothing to wait on returns at once.
                unsafe { libc::usleep(200_000) };
            }
            continue;
        }
        for k in 0..np {
            if pfds[k].revents == 0 {
                continue;
            }
            let idx = which[k];
            let mut b = [0u8; 64];
            let got = unsafe {
                libc::recv(pfds[k].fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT)
            };
            if got > 0 || (got < 0 && errno().raw_os_error() == Some(libc::EAGAIN)) {
                continue; // nothing is expected on this connection; ignore
            }
            // Keep counting in the load map we have: the program stays attached and keeps
            // reading it. A new registration replaces it.
            let fd = CONN_FDS[idx].swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                unsafe { Real::CLOSE()(fd) };
            }
            NEXT_RETRY_MS[idx].store(now_ms() + 1000, Ordering::Relaxed);
            SAID_UNREACHABLE.store(false, Ordering::Relaxed);
            shim_log!("controller went away; keeping the last load map, retrying every second");
        }
    }
}

enum RegisterError {
    Unreachable,
    Rejected,
}

fn register(idx: usize, listener: c_int, pid: u32) -> Result<(), RegisterError> {
    let cfg = config();
    let s = unsafe { Real::SOCKET()(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(RegisterError::Unreachable);
    }
    let close_s = || unsafe { Real::CLOSE()(s) };
    let mut sun: libc::sockaddr_un = unsafe { zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, c) in sun.sun_path.iter_mut().zip(&cfg.socket_path[..cfg.socket_path_len]) {
        *d = *c as c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + cfg.socket_path_len + 1) as libc::socklen_t;
    if unsafe { libc::connect(s, (&sun as *const libc::sockaddr_un).cast(), len) } != 0 {
        if !SAID_UNREACHABLE.swap(true, Ordering::Relaxed) {
            let path = core::str::from_utf8(&cfg.socket_path[..cfg.socket_path_len]).unwrap_or("?");
            shim_log!("controller not reachable at {path} ({}); serving with the kernel's hash, retrying every second", errno());
        }
        close_s();
        return Err(RegisterError::Unreachable);
    }
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let msg = Register::new(pid, cfg.weight).encode();
    if send_with_fd(s, &msg, listener) < 0 {
        close_s();
        return Err(RegisterError::Unreachable);
    }
    let mut buf = [0u8; Reply::SIZE + 16];
    let (n, map_fd) = recv_with_fd(s, &mut buf);
    let reply = match n {
        Some(n) => Reply::decode(&buf[..n]),
        None => {
            close_s();
            return Err(RegisterError::Unreachable);
        }
    };
    let addr = cfg.addrs[idx];
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            shim_log!("registration of {addr:?}: bad reply from the controller: {e}");
            if map_fd >= 0 {
                unsafe { Real::CLOSE()(map_fd) };
            }
            close_s();
            return Err(RegisterError::Rejected);
        }
    };
    if reply.status() != Status::Ok || map_fd < 0 {
        shim_log!(
            "registration of {} rejected ({}): {}",
            DisplayAddr(addr),
            reply.status().name(),
            if map_fd < 0 && reply.status() == Status::Ok {
                "no load map attached"
            } else {
                reply.reason()
            }
        );
        if map_fd >= 0 {
            unsafe { Real::CLOSE()(map_fd) };
        }
        close_s();
        return Err(RegisterError::Rejected);
    }
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            LOADS_MMAP_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map_fd,
            0,
        )
    };
    let map_id = bpf_map_id(map_fd);
    unsafe { Real::CLOSE()(map_fd) };
    if base == libc::MAP_FAILED {
        shim_log!("mmap of the load map failed: {}", errno());
        close_s();
        return Err(RegisterError::Rejected);
    }
    let reg = &REGS[idx];
    let s_old = reg.state.load(Ordering::Relaxed);
    // The same slot of the same map, with the same epoch (a restarted controller that adopted the
    // pinned group gave our slot back): keep the sequence number, so that the connections
    // accepted before still count their completion when they close.
    let same = s_old & 1 == 1
        && map_id != 0
        && reg.map_id.load(Ordering::Relaxed) == map_id
        && reg.slot.load(Ordering::Relaxed) == reply.slot
        && reg.epoch.load(Ordering::Relaxed) == reply.epoch;
    if !same {
        // Old marks stop counting before the new slot is published.
        reg.deactivate();
    }
    // Old mappings are never unmapped: a hook may still be reading through one.
    reg.base.store(base.cast(), Ordering::Relaxed);
    reg.slot.store(reply.slot, Ordering::Relaxed);
    reg.epoch.store(reply.epoch, Ordering::Relaxed);
    reg.map_id.store(map_id, Ordering::Relaxed);
    let s_now = reg.state.load(Ordering::Relaxed);
    let new_state = if same { s_now } else { (((s_now >> 1).wrapping_add(1)) << 1) | 1 };
    reg.state.store(new_state, Ordering::Release);
    CONN_FDS[idx].store(s, Ordering::Release);
    SAID_UNREACHABLE.store(false, Ordering::Relaxed);
    shim_log!("registered {} as slot {} (epoch {})", DisplayAddr(addr), reply.slot, reply.epoch);
    Ok(())
}

/// The kernel id of the BPF map behind `fd` (BPF_OBJ_GET_INFO_BY_FD), 0 if unknown.
fn bpf_map_id(fd: c_int) -> u32 {
    // struct bpf_map_info begins with `__u32 type; __u32 id;`: the kernel fills what fits.
    let mut info = [0u32; 2];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: size_of::<[u32; 2]>() as u32,
        info: info.as_mut_ptr() as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            size_of::<InfoAttr>() as u32,
        )
    };
    if r < 0 {
        0
    } else {
        info[1]
    }
}

struct DisplayAddr(Option<SocketAddr>);
impl fmt::Display for DisplayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("?"),
        }
    }
}

const CMSG_SPACE_ONE_FD: usize = 24; // CMSG_SPACE(sizeof(int)) on 64-bit

#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

fn send_with_fd(s: c_int, data: &[u8], fd: c_int) -> isize {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut c_void, iov_len: data.len() };
    let mut cbuf = CmsgBuf([0; 64]);
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
    debug_assert!(msg.msg_controllen <= CMSG_SPACE_ONE_FD);
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
        libc::sendmsg(s, &msg, libc::MSG_NOSIGNAL)
    }
}

/// Receives one message; returns its length (None on error/EOF) and the first attached fd (-1).
fn recv_with_fd(s: c_int, buf: &mut [u8]) -> (Option<usize>, c_int) {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf([0; 64]);
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    let n = unsafe { libc::recvmsg(s, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let mut fd = -1;
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<c_int>();
                for k in 0..count {
                    let f = ptr::read_unaligned(data.cast::<c_int>().add(k));
                    if fd < 0 {
                        fd = f;
                    } else {
                        Real::CLOSE()(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n <= 0 {
        if fd >= 0 {
            unsafe { Real::CLOSE()(fd) };
        }
        return (None, -1);
    }
    (Some(n as usize), fd)
}
