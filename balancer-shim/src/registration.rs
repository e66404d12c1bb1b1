//! Registration with the controller (`REUSELB_SOCKET`): the protocol (one `Register` with the
//! listener attached, one `Reply` with the load map attached), the check of the load map before
//! it is mapped, and the background thread that keeps each address registered.
//!
//! - The connection stays open while the worker is in the group: closing it is how the worker
//!   leaves (the controller frees the slot and closes its copy of the socket). It sits on a high
//!   descriptor number ([`move_high`]) so that an app closing descriptors by number (3..N) does
//!   not close it, and a vfork child's `close` hooks leave it alone (they check the pid).
//! - The load map is mapped only if `/proc/self/fdinfo/<fd>` shows the map the reply names
//!   (see [`crate::loadmap`]). Anything else is disposed of and logged and the worker keeps
//!   serving, unregistered: a memfd or a short map would otherwise SIGBUS it.
//! - One registration attempt ([`register_on`]) is a sequence of steps (send, receive, take the
//!   listener handed over, map the table, publish); what it made or received so far sits in one
//!   cleanup guard ([`Owned`]), so every early return releases it: the connection closed (the
//!   controller frees the slot), received descriptors disposed of, never closed in a hook's
//!   thread. Only `publish` hands the connection on, once it is this address's connection.
//!
//! Depends on `sock`, `cmsg`, `owned`, `loadmap` and the state; nothing of `split` (which calls
//! in here: [`register_fresh`], [`take_pending`], [`leave`], ...).
//! - The thread (one per process, started at the first look at a balanced listener) retries
//!   every second while the controller is absent or gone (after a refusal: 5 s, doubling to
//!   80 s, since a fresh socket sits in the kernel's hash for the round trip and what lands on it
//!   is reset when the refusal closes it): for an own
//!   socket, it registers that socket again; for a process still on the shared socket, it
//!   registers a fresh socket and leaves it in [`PENDING`] for the hooks (see [`crate::split`]).
//! - A worker that does not run as the uid owning the shared socket (an app server that bound it
//!   as root and then dropped privileges: gunicorn `--user`, uWSGI `shared-socket` + `uid`)
//!   cannot put a socket of its own into the group (the kernel wants one owner uid per reuseport
//!   group). It registers with `Register::WANT_SOCKET` and the shared socket attached, as the
//!   proof of its address; the controller creates the listener and attaches it to the reply after
//!   the load map (`Reply::SOCKET_ATTACHED`). The shim uses it only if it is a listening TCP
//!   socket with SO_REUSEPORT on the shared socket's address, in place of the socket it would
//!   have created (same path from there on); anything else is logged, disposed of, and the worker
//!   keeps the shared socket. Known limit: such a worker started after the group formed (the
//!   shared socket already shut down) while the controller is unreachable has no socket it may
//!   serve on until the controller answers; the registered workers serve meanwhile (nothing is
//!   queued on a socket it could lose).
//! - When the app closes its listener (a graceful worker exit: gunicorn gthread/gevent close
//!   their listeners, then finish in-flight requests), [`leave`] shuts the connection down at once
//!   and the address is never registered again by this process.

use core::{
    ffi::{c_char, c_int, c_void},
    mem::{size_of, zeroed},
    net::SocketAddr,
    ptr,
    sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};

use balancer_common::{
    protocol::{Register, Reply, Status},
    LOADS_MMAP_LEN,
};

use crate::{
    cmsg::{recv_with_fds, send_with_fd},
    config::{config, MAX_ADDRS},
    loadmap::check_load_map,
    log::{errno, shim_log, DisplayAddr},
    owned::{close_deferred, Disposal, Owned},
    process::{fd_if_ours, forget_registration_thread, my_pid, set_registration_thread, tagged},
    real::Real,
    sock::{
        cookie, create_own, high_fd_floor, is_listener_like, move_high, owns_socket, set_timeout,
    },
    state::{
        own_backlog, LEFT, OWN_COOKIE, OWN_FD, PENDING, PENDING_PID, REGS, SHARED_FD, SHARED_REF,
        THREAD_PID,
    },
};

/// Connection to the controller per balanced address (this process's; -1 if none).
static CONN_FDS: [AtomicI32; MAX_ADDRS] = [const { AtomicI32::new(-1) }; MAX_ADDRS];
static NEXT_RETRY_MS: [AtomicUsize; MAX_ADDRS] = [const { AtomicUsize::new(0) }; MAX_ADDRS];
/// Refusals in a row per address (for the back-off).
static REFUSALS: [AtomicUsize; MAX_ADDRS] = [const { AtomicUsize::new(0) }; MAX_ADDRS];
/// pid of the process whose thread is registering a fresh socket for the address right now: a
/// hook that needs a socket waits for that registration instead of starting a second one.
static FRESH_IN_FLIGHT: [AtomicU32; MAX_ADDRS] = [const { AtomicU32::new(0) }; MAX_ADDRS];
/// pid of the process that dropped the address's registration on purpose ([`drop_registration`]):
/// the thread registers the own socket again at once, without logging a departure.
static DROPPED: [AtomicU32; MAX_ADDRS] = [const { AtomicU32::new(0) }; MAX_ADDRS];
/// Set once a "controller not reachable" line was logged (per process, reset after registration).
static SAID_UNREACHABLE: AtomicBool = AtomicBool::new(false);

/// Reply timeout of the background thread's registrations.
const THREAD_TIMEOUT_MS: i64 = 5000;

/// In the child after fork: the parent's registrations, connections and private descriptors are
/// not ours (fork copied them; keeping them would keep the parent's sockets alive).
pub(crate) fn forget_parent_registrations() {
    THREAD_PID.store(0, Ordering::Relaxed);
    forget_registration_thread();
    for r in &REGS {
        r.deactivate();
    }
    for c in &CONN_FDS {
        let fd = c.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: the parent's connection, copied into this child by fork: ours to close.
            unsafe { Real::CLOSE()(fd) };
        }
    }
    for v in PENDING.iter().chain(&SHARED_REF) {
        let t = v.swap(0, Ordering::Relaxed);
        if t != 0 {
            // SAFETY: the parent's private descriptor, copied by fork: ours to close.
            unsafe { Real::CLOSE()((t & 0xffff_ffff) as u32 as c_int) };
        }
    }
}

/// The app closed its listener of address `idx`: leave the group now (the controller frees the
/// slot when the connection closes) and never register that address again in this process.
/// Called from the close hooks: no descriptor is closed here (the thread does that), the
/// connection is only shut down, which the controller sees at once.
pub(crate) fn leave(idx: usize) {
    let pid = my_pid();
    if LEFT[idx].swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let c = CONN_FDS[idx].load(Ordering::Acquire);
    if c >= 0 {
        // SAFETY: shutdown of our own connection to the controller.
        unsafe { libc::shutdown(c, libc::SHUT_RDWR) };
        shim_log!(
            "the app closed its listener on {}: left the group",
            DisplayAddr(config().addrs[idx])
        );
    }
}

/// The registration of address `idx` no longer matches a socket the app serves on (a pending
/// socket that lost to a rescue's own socket, see [`crate::split`]): stop counting in its slot and
/// shut its connection down, so that the controller frees the slot; the thread then registers
/// the own socket the process serves on. Unlike [`leave`], the process stays in the group.
pub(crate) fn drop_registration(idx: usize) {
    let pid = my_pid();
    REGS[idx].deactivate();
    let c = CONN_FDS[idx].load(Ordering::Acquire);
    if c >= 0 {
        DROPPED[idx].store(pid, Ordering::Release);
        // SAFETY: shutdown of our own connection to the controller (the thread closes it).
        unsafe { libc::shutdown(c, libc::SHUT_RDWR) };
    }
}

/// Waits up to `max_ms` for a fresh socket the thread is registering for address `idx` (none in
/// flight: returns at once); the registered socket, taken from [`PENDING`], if there is one.
pub(crate) fn take_pending(idx: usize, pid: u32, max_ms: usize) -> Option<c_int> {
    let deadline = now_ms() + max_ms;
    loop {
        let busy = FRESH_IN_FLIGHT[idx].load(Ordering::Acquire) == pid;
        if let Some(fd) = fd_if_ours(PENDING[idx].swap(0, Ordering::AcqRel), pid) {
            return Some(fd);
        }
        if !busy || now_ms() >= deadline {
            return None;
        }
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        // SAFETY: nanosleep reads one timespec; a null remainder is allowed.
        unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
    }
}

/// Starts this process's registration thread, once.
pub(crate) fn start_thread() {
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
    // SAFETY: timespec is plain data; all zeroes is a valid value.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as usize * 1000 + ts.tv_nsec as usize / 1_000_000
}

/// Closes the descriptor in a tagged slot if it is `pid`'s.
fn close_tagged(v: &AtomicU64, pid: u32) {
    if let Some(fd) = fd_if_ours(v.load(Ordering::Acquire), pid) {
        v.store(0, Ordering::Release);
        // SAFETY: the shim's own private descriptor, used only by this thread.
        unsafe { Real::CLOSE()(fd) };
    }
}

/// One pass over the addresses: what to register, which connections to watch.
fn tend(idx: usize, pid: u32) -> Option<c_int> {
    if LEFT[idx].load(Ordering::Acquire) == pid {
        let fd = CONN_FDS[idx].swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: our own connection to the controller.
            unsafe { Real::CLOSE()(fd) };
        }
        close_tagged(&PENDING[idx], pid);
        close_tagged(&SHARED_REF[idx], pid);
        return None;
    }
    let own = fd_if_ours(OWN_FD[idx].load(Ordering::Acquire), pid);
    if own.is_some() {
        // Split: the private duplicate of the shared socket is of no more use.
        close_tagged(&SHARED_REF[idx], pid);
    }
    let conn = CONN_FDS[idx].load(Ordering::Acquire);
    if conn >= 0 {
        return Some(conn);
    }
    if now_ms() < NEXT_RETRY_MS[idx].load(Ordering::Relaxed) {
        return None;
    }
    let result: Result<(), RegisterError> = if own.is_some() {
        register_own(idx, pid)
    } else if fd_if_ours(PENDING[idx].load(Ordering::Acquire), pid).is_some() {
        Ok(()) // registered, waiting for a hook to swap it in
    } else if let (Some(shared), Some(_)) = (
        fd_if_ours(SHARED_REF[idx].load(Ordering::Acquire), pid),
        fd_if_ours(SHARED_FD[idx].load(Ordering::Acquire), pid),
    ) {
        FRESH_IN_FLIGHT[idx].store(pid, Ordering::Release);
        let r = register_fresh(idx, shared, THREAD_TIMEOUT_MS).map(|fresh| {
            PENDING[idx].store(tagged(pid, fresh), Ordering::Release);
            PENDING_PID.store(pid, Ordering::Release);
            // The controller attached the migrating program before it said Ok: the shared
            // queue moves to registered sockets, and every process waiting on the shared
            // socket wakes up and splits.
            // SAFETY: shutdown through our private duplicate of the shared listener.
            unsafe { libc::shutdown(shared, libc::SHUT_RDWR) };
        });
        FRESH_IN_FLIGHT[idx].store(0, Ordering::Release);
        r
    } else {
        return None;
    };
    note_attempt(idx, &result);
    None
}

/// Schedules the next registration attempt for address `idx` after one ended with `result`
/// (the hooks' synchronous attempts too, so that the thread does not retry at once).
pub(crate) fn note_attempt<T>(idx: usize, result: &Result<T, RegisterError>) {
    let retry_in = match result {
        Ok(_) => {
            REFUSALS[idx].store(0, Ordering::Relaxed);
            0
        }
        Err(RegisterError::Unreachable) => 1000,
        // Another registration of this address is under way or done: nothing to schedule.
        Err(RegisterError::Busy) => return,
        // Each attempt with a fresh socket puts it in the kernel's hash for one round trip, and
        // what lands there is reset when a refusal closes it: back off, 5 s doubling to 80 s.
        Err(RegisterError::Rejected) => {
            let n = REFUSALS[idx].fetch_add(1, Ordering::Relaxed).min(4);
            5000 << n
        }
    };
    NEXT_RETRY_MS[idx].store(now_ms() + retry_in, Ordering::Relaxed);
}

fn registration_loop(pid: u32) {
    set_registration_thread();
    loop {
        close_deferred();
        if my_pid() != pid || THREAD_PID.load(Ordering::Acquire) != pid {
            return;
        }
        // SAFETY: pollfd is plain data; all zeroes is a valid value.
        let mut pfds: [libc::pollfd; MAX_ADDRS] = unsafe { zeroed() };
        let mut which = [0usize; MAX_ADDRS];
        let mut np = 0;
        for idx in 0..config().n_addrs {
            if let Some(conn) = tend(idx, pid) {
                pfds[np] = libc::pollfd { fd: conn, events: libc::POLLIN, revents: 0 };
                which[np] = idx;
                np += 1;
            }
        }
        // SAFETY: polls the first `np` entries of our own array.
        let r = unsafe { Real::POLL()(pfds.as_mut_ptr(), np as libc::nfds_t, 1000) };
        if r <= 0 {
            if np == 0 {
                // poll with nothing to wait on returns at once.
                // SAFETY: usleep has no preconditions.
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
            // SAFETY: receives into our own buffer from our own connection.
            let got = unsafe {
                libc::recv(pfds[k].fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT)
            };
            if got > 0 || (got < 0 && errno().0 == libc::EAGAIN) {
                continue; // nothing is expected on this connection; ignore
            }
            // Keep counting in the load map we have: the program stays attached and keeps
            // reading it. A new registration replaces it.
            let fd = CONN_FDS[idx].swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                // SAFETY: our own connection to the controller.
                unsafe { Real::CLOSE()(fd) };
            }
            if LEFT[idx].load(Ordering::Acquire) == pid {
                continue;
            }
            if DROPPED[idx].swap(0, Ordering::AcqRel) == pid {
                NEXT_RETRY_MS[idx].store(0, Ordering::Relaxed);
                continue;
            }
            NEXT_RETRY_MS[idx].store(now_ms() + 1000, Ordering::Relaxed);
            SAID_UNREACHABLE.store(false, Ordering::Relaxed);
            shim_log!("controller went away; keeping the last load map, retrying every second");
        }
    }
}

#[derive(Debug)]
pub(crate) enum RegisterError {
    /// No controller (no socket file, refused, gone mid-way, no answer in time).
    Unreachable,
    /// The controller answered, but not with a usable Ok.
    Rejected,
    /// Another registration of the address (the thread's or a hook's) is under way or won.
    Busy,
}

/// A connection to the controller (high descriptor, close-on-exec), or Unreachable.
fn connect_controller() -> Result<c_int, RegisterError> {
    let cfg = config();
    if cfg.socket_path_len == 0 {
        return Err(RegisterError::Unreachable);
    }
    // Non-blocking connect: a unix connect blocks while the listener's backlog is full (a
    // controller stopped, frozen, or stuck), and this runs inside the app's first wait/accept.
    // EAGAIN then means "unreachable"; the connection is made blocking again once it is made
    // (the replies are bounded by SO_RCVTIMEO/SO_SNDTIMEO instead).
    // SAFETY: socket() with constant arguments.
    let s = unsafe {
        Real::SOCKET()(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if s < 0 {
        return Err(RegisterError::Unreachable);
    }
    // Our own socket, not yet published: closed if the connect fails.
    let mut held = Owned::new();
    held.hold(s, Disposal::Close);
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, c) in sun.sun_path.iter_mut().zip(&cfg.socket_path[..cfg.socket_path_len]) {
        *d = *c as c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + cfg.socket_path_len + 1) as libc::socklen_t;
    // SAFETY: connects our socket to a NUL-terminated path inside `sun`.
    if unsafe { libc::connect(s, (&sun as *const libc::sockaddr_un).cast(), len) } != 0 {
        if !SAID_UNREACHABLE.swap(true, Ordering::Relaxed) {
            let path = core::str::from_utf8(&cfg.socket_path[..cfg.socket_path_len]).unwrap_or("?");
            shim_log!(
                "controller not reachable at {path} ({}); serving on the shared socket, \
                 retrying every second",
                errno()
            );
        }
        return Err(RegisterError::Unreachable);
    }
    // SAFETY: clears the status flags (O_NONBLOCK) of our own connected socket.
    unsafe { libc::fcntl(s, libc::F_SETFL, 0) };
    Ok(move_high(held.take(s)))
}

/// Registers a fresh own socket for address `idx`, made like `src` (the shared listener). The
/// own socket is created only once the controller is reachable. On Ok, the caller owns the
/// returned socket (registered, at a high descriptor number).
pub(crate) fn register_fresh(
    idx: usize,
    src: c_int,
    timeout_ms: i64,
) -> Result<c_int, RegisterError> {
    let pid = my_pid();
    if CONN_FDS[idx].load(Ordering::Acquire) >= 0 || LEFT[idx].load(Ordering::Acquire) == pid {
        return Err(RegisterError::Busy);
    }
    let conn = connect_controller()?;
    // A socket of ours joins the group only if we run as the uid that owns it (the kernel's
    // reuseport owner rule): a worker whose master bound the shared socket and then dropped
    // privileges asks the controller for one instead (see `registry::handover` there).
    let own = if owns_socket(src) { create_own(src, own_backlog(idx)) } else { None };
    let Some(own) = own else {
        return register_on(conn, idx, src, pid, timeout_ms, Want::Socket);
    };
    // Our own socket, never published if the registration fails (the controller closes its copy).
    let mut held = Owned::new();
    held.hold(own, Disposal::Close);
    register_on(conn, idx, own, pid, timeout_ms, Want::MapOnly)?;
    Ok(held.take(own))
}

/// What a registration asks the controller for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The load map: the attached socket is the worker's own listener.
    MapOnly,
    /// The load map and a listener created by the controller (`Register::WANT_SOCKET`): the
    /// attached socket is the shared one, the proof of the address.
    Socket,
}

/// Registers (again) this process's own socket of address `idx`, through a private duplicate:
/// the app may close the socket's number at any time (also where no hook sees it) and put
/// another descriptor there, which must never be sent as the worker's listener. So the number is
/// duplicated first and the duplicate checked after (still the own socket's number, the address
/// not left, the same socket by SO_COOKIE); a number that holds something else now is not
/// registered (Rejected: the thread backs off).
fn register_own(idx: usize, pid: u32) -> Result<(), RegisterError> {
    let tag = OWN_FD[idx].load(Ordering::Acquire);
    let Some(fd) = fd_if_ours(tag, pid) else { return Ok(()) };
    // SAFETY: duplicates a descriptor number, close-on-exec, high; an invalid one gives -1.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high_fd_floor()) };
    // The duplicate is ours, closed when this registration ends (the controller keeps its own).
    let mut held = Owned::new();
    held.hold(copy, Disposal::Close);
    let want = OWN_COOKIE[idx].load(Ordering::Relaxed);
    let same = copy >= 0
        && OWN_FD[idx].load(Ordering::Acquire) == tag
        && LEFT[idx].load(Ordering::Acquire) != pid
        && (want == 0 || cookie(copy) == Some(want));
    if !same {
        if LEFT[idx].load(Ordering::Acquire) == pid {
            return Ok(()); // closed through a hook: the next pass cleans up
        }
        shim_log!(
            "the own socket of {} is not at fd {fd} any more (closed where no hook saw it): not \
             registering what is there now",
            DisplayAddr(config().addrs[idx])
        );
        return Err(RegisterError::Rejected);
    }
    register_listener(idx, copy, pid, THREAD_TIMEOUT_MS)
}

/// Registers (again) the own socket `listener` of address `idx`.
fn register_listener(
    idx: usize,
    listener: c_int,
    pid: u32,
    timeout_ms: i64,
) -> Result<(), RegisterError> {
    let conn = connect_controller()?;
    register_on(conn, idx, listener, pid, timeout_ms, Want::MapOnly).map(drop)
}

/// Sends the registration of `listener` on `conn` (consumed) and takes the reply; on Ok, maps
/// the load table, publishes the registration and keeps `conn` as this address's connection.
/// With [`Want::Socket`], `listener` is the shared socket and the reply must carry a listener on
/// its address, which is returned (ours, close-on-exec, at a high number, with the shared
/// socket's O_NONBLOCK); otherwise the result is `listener`.
fn register_on(
    conn: c_int,
    idx: usize,
    listener: c_int,
    pid: u32,
    timeout_ms: i64,
    want: Want,
) -> Result<c_int, RegisterError> {
    // Everything this registration made or received is released on every early return below:
    // the connection closed (the controller frees the slot), the rest disposed of.
    let mut held = Owned::new();
    held.hold(conn, Disposal::Close);
    let addr = config().addrs[idx];
    send_register(conn, listener, pid, timeout_ms, want)?;
    let (reply, map_fd, given) = receive_reply(conn, want, addr, &mut held)?;
    let result = match want {
        Want::MapOnly => listener,
        Want::Socket => take_given_listener(&reply, given, listener, addr, &mut held)?,
    };
    let (base, map_id) = map_load_table(map_fd, reply.map_id, addr, &mut held)?;
    publish(idx, &mut held, conn, base, &reply, map_id)?;
    shim_log!(
        "registered {} as slot {} (epoch {}){}",
        DisplayAddr(addr),
        reply.slot,
        reply.epoch,
        if want == Want::Socket { ", on a listener the controller created" } else { "" }
    );
    Ok(held.take(result))
}

/// Sends the `Register` of process `pid` on `conn` with `listener` attached, after bounding
/// both directions of `conn` by `timeout_ms`.
fn send_register(
    conn: c_int,
    listener: c_int,
    pid: u32,
    timeout_ms: i64,
    want: Want,
) -> Result<(), RegisterError> {
    set_timeout(conn, libc::SO_RCVTIMEO, timeout_ms);
    set_timeout(conn, libc::SO_SNDTIMEO, timeout_ms);
    let mut msg = crate::config::register_message(pid);
    if want == Want::Socket {
        msg.flags |= Register::WANT_SOCKET;
    }
    if send_with_fd(conn, &msg.encode(), listener) < 0 {
        return Err(RegisterError::Unreachable);
    }
    Ok(())
}

/// Receives the controller's `Reply` on `conn`: an Ok with the load map attached, and with
/// [`Want::Socket`] the listener the controller handed over (-1 if none). Both descriptors are
/// in `held` to be disposed of (not checked yet, so never closed in this thread, which may be a
/// hook's), as is one the reply carried that was not asked for.
fn receive_reply(
    conn: c_int,
    want: Want,
    addr: Option<SocketAddr>,
    held: &mut Owned,
) -> Result<(Reply, c_int, c_int), RegisterError> {
    let mut buf = [0u8; Reply::SIZE + 16];
    let mut fds = [-1; 2];
    let n = recv_with_fds(conn, &mut buf, &mut fds).ok_or(RegisterError::Unreachable)?;
    let [map_fd, given] = fds;
    held.hold(map_fd, Disposal::Dispose);
    held.hold(given, Disposal::Dispose);
    if want == Want::MapOnly {
        held.release(given);
    }
    let reply = Reply::decode(&buf[..n]).map_err(|e| {
        shim_log!("registration of {}: bad reply from the controller: {e}", DisplayAddr(addr));
        RegisterError::Rejected
    })?;
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
        return Err(RegisterError::Rejected);
    }
    Ok((reply, map_fd, given))
}

/// With [`Want::Socket`]: `given`, the listener the controller handed over, if it is what was
/// asked for (a listener on the address of `shared`), with the shared socket's O_NONBLOCK, moved
/// to a high number (still in `held`, disposed of if the registration fails later).
fn take_given_listener(
    reply: &Reply,
    given: c_int,
    shared: c_int,
    addr: Option<SocketAddr>,
    held: &mut Owned,
) -> Result<c_int, RegisterError> {
    let attached = reply.flags & Reply::SOCKET_ATTACHED != 0;
    if !attached || given < 0 || !is_listener_like(given, shared) {
        shim_log!(
            "registration of {}: the controller did not hand over a listener on this \
             address; serving on the shared socket, unbalanced",
            DisplayAddr(addr)
        );
        return Err(RegisterError::Rejected);
    }
    // SAFETY: fcntl query on the shared listener, which the app holds open.
    let fl = unsafe { libc::fcntl(shared, libc::F_GETFL) };
    // SAFETY: sets a status flag of the socket the controller handed to us (ours now).
    let set_nonblock = || unsafe { libc::fcntl(given, libc::F_SETFL, libc::O_NONBLOCK) };
    if fl >= 0 && fl & libc::O_NONBLOCK != 0 && set_nonblock() != 0 {
        return Err(RegisterError::Rejected);
    }
    Ok(held.moved(given, move_high(given)))
}

/// Maps the load table from `map_fd` (taken out of `held` and closed once it proved to be the
/// load map, see [`check_load_map`]); the mapping and the map's kernel id.
fn map_load_table(
    map_fd: c_int,
    want_id: u32,
    addr: Option<SocketAddr>,
    held: &mut Owned,
) -> Result<(*mut c_void, u32), RegisterError> {
    let map_id = check_load_map(map_fd, want_id).map_err(|why| {
        shim_log!(
            "registration of {}: the descriptor attached to the reply is not the load map \
             ({why}); not mapping it, serving unbalanced",
            DisplayAddr(addr)
        );
        RegisterError::Rejected
    })?;
    // SAFETY: maps the load map checked above (an mmap-able array of one LoadTable, exactly
    // LOADS_MMAP_LEN bytes of value); a failure is reported as MAP_FAILED.
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
    // SAFETY: the load map checked above (a BPF map closes at once); ours to close.
    unsafe { Real::CLOSE()(held.take(map_fd)) };
    if base == libc::MAP_FAILED {
        shim_log!("mmap of the load map failed: {}", errno());
        return Err(RegisterError::Rejected);
    }
    Ok((base, map_id))
}

/// Makes `conn` the connection of address `idx` (taken out of `held`) and publishes the slot the
/// reply gave, mapped at `base`. Busy (and `base` unmapped) if another registration of the
/// address won the race (the thread and a hook): this one leaves again when `held` closes `conn`.
fn publish(
    idx: usize,
    held: &mut Owned,
    conn: c_int,
    base: *mut c_void,
    reply: &Reply,
    map_id: u32,
) -> Result<(), RegisterError> {
    if CONN_FDS[idx].compare_exchange(-1, conn, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // SAFETY: unmaps our own mapping, published nowhere.
        unsafe { libc::munmap(base, LOADS_MMAP_LEN) };
        return Err(RegisterError::Busy);
    }
    held.take(conn);
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
    SAID_UNREACHABLE.store(false, Ordering::Relaxed);
    Ok(())
}
