//! Classification of descriptors and the socket split: an inherited listening socket of a
//! balanced address is replaced, at the same descriptor number, by this process's own socket.
//!
//! # Fail-open: split only after the controller said Ok
//!
//! An own socket is only worth having once the controller has it in its group: before that, it
//! is one more queue in the kernel's hash, and closing it (a worker exit) resets what is queued
//! there. So the shim never splits, and never shuts the shared socket down, before a
//! registration succeeded. An app with the shim and no controller keeps the shared socket in
//! every worker and behaves exactly as without the shim.
//!
//! - First wait/accept on an inherited balanced listener (`epoll_ctl` ADD, `poll`, `select`,
//!   `accept`): connect to the controller; unreachable (no socket file, refused): keep the
//!   shared socket ([`ST_SHARED`]), at the cost of one failed `connect`. Reachable: create the
//!   own socket, register it synchronously (reply within [`SYNC_TIMEOUT_MS`]; a healthy
//!   controller answers in well under a millisecond). Ok: the controller attached the (migrating)
//!   program before answering, so shutting the shared socket down now migrates its queue instead
//!   of resetting it; then `dup3` the own socket over the descriptor. Anything else: close the
//!   own socket and keep the shared one, unless another worker already shut it down (a worker
//!   respawned after the group formed): then serve on an own socket at once and let the thread
//!   register it (the program attached by then only picks registered sockets). Known limit: connections the kernel's hash put on the
//!   own socket during that round trip are reset with it (the controller needs a listening
//!   socket to register, and an unattached group hashes over every listener). A controller that
//!   is absent costs nothing; one that refuses costs that window once per attempt, and the
//!   thread backs off (5 s doubling to 80 s).
//! - Late registration: while a process keeps the shared socket, its registration thread tries
//!   every second (every 5 s after a refusal) with a fresh own socket. Ok: the fresh socket waits
//!   in [`PENDING`], the thread shuts the shared socket down (its queue migrates; every process
//!   polling it wakes up), and the process's next hook call (`accept`, `poll`, `select`,
//!   `epoll_wait`, `epoll_pwait`, `epoll_ctl`) swaps it in: delete the shared socket from the
//!   epoll instances this process added it to (recorded from `epoll_ctl`), `dup3`, add the own
//!   socket back with the same events and data.
//! - A process still on the shared socket when another one shut it down sees `accept` fail with
//!   EINVAL (EMFILE first if it has no descriptor left) or `poll` report POLLHUP: the hook splits
//!   right there (pending socket, else a synchronous registration, else an own unregistered
//!   socket, registered later by the thread) and accepts again, instead of handing the error back
//!   to a loop that would spin on it. If even that fails (no descriptor
//!   left), the hook sleeps 100 ms before returning, so the loop cannot spin at full speed.
//!
//! # Known limit: the select-only program
//!
//! Shutting the shared socket down migrates its queue only when the controller attached the
//! migrating program. A controller that attached the select-only program (no migration) would
//! see the shared socket's queue reset by that shutdown. The shim cannot tell which program is
//! attached: that needs a flag in the protocol's `Reply`, which it does not carry yet.

use core::{
    ffi::c_int,
    mem::{size_of, zeroed},
    ptr,
    sync::atomic::Ordering,
};

use crate::{
    config::{addr_index, config},
    log::{errno, shim_log},
    process::{fd_if_ours, in_vfork_child, my_pid, tagged},
    real::Real,
    registration::{self, start_thread},
    sock::{cookie, create_own, high_fd_floor, int_opt, sockname},
    state::{
        entry, own_backlog, state_of, EPOLLS, FDS, LEFT, MAX_EPOLLS, MAX_FDS, OWN_COOKIE, OWN_FD,
        PENDING, PENDING_PID, SHARED_FD, SHARED_REF, ST_DUP_OWN, ST_DUP_SHARED, ST_NOT_BALANCED,
        ST_SHARED, ST_SPLIT, ST_SPLITTING,
    },
};

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
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into our storage.
    let r =
        unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    if r == 0 {
        return None;
    }
    Some(idx)
}

/// Synchronous registration at the first wait: longest wait for the controller's reply.
pub(crate) const SYNC_TIMEOUT_MS: i64 = 250;

/// Makes sure `fd`, if it is an inherited listener of a balanced address, has been classified:
/// split when the controller registered our own socket, kept shared otherwise. Fast path: one
/// atomic load.
#[inline(always)]
pub(crate) fn ensure_split(fd: c_int) {
    if fd < 0 || fd as usize >= MAX_FDS {
        return;
    }
    let e = FDS[fd as usize].load(Ordering::Acquire);
    if (e >> 32) as u32 == my_pid() && state_of(e) != ST_SPLITTING {
        return;
    }
    let _ = std::panic::catch_unwind(|| ensure_split_slow(fd));
}

/// Waits a little for another thread's split.
fn wait_a_moment() {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
    // SAFETY: nanosleep reads one timespec; a null remainder is allowed.
    unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
}

#[cold]
fn ensure_split_slow(fd: c_int) {
    let slot = &FDS[fd as usize];
    let pid = my_pid();
    if in_vfork_child() {
        return;
    }
    loop {
        let e = slot.load(Ordering::Acquire);
        if (e >> 32) as u32 == pid {
            if state_of(e) == ST_SPLITTING {
                // Another thread of this process is splitting this socket: wait for it.
                wait_a_moment();
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
        if let Some(st) = duplicate_of_ours(fd, idx, pid) {
            // A duplicate of the listener this process already handled: the same socket.
            let _ =
                slot.compare_exchange(e, entry(pid, st, idx), Ordering::AcqRel, Ordering::Relaxed);
            return;
        }
        if slot
            .compare_exchange(e, entry(pid, ST_SPLITTING, idx), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let st = first_split(fd, idx, pid);
        finish_split(fd, idx, pid, st);
        start_thread();
        return;
    }
}

/// If `fd` is another descriptor (`dup`, `socket.fromfd`) of this process's own socket or of the
/// shared listener it keeps for address `idx`: the state it gets.
fn duplicate_of_ours(fd: c_int, idx: usize, pid: u32) -> Option<u64> {
    let c = cookie(fd)?;
    let same = |v: &core::sync::atomic::AtomicU64| {
        fd_if_ours(v.load(Ordering::Acquire), pid).is_some_and(|o| o != fd && cookie(o) == Some(c))
    };
    if same(&OWN_FD[idx]) {
        return Some(ST_DUP_OWN);
    }
    if same(&SHARED_FD[idx]) || same(&SHARED_REF[idx]) {
        return Some(ST_DUP_SHARED);
    }
    None
}

/// The app closed `fd`, a descriptor in state `st` of its listener of address `idx` (the close
/// hook cleared its entry). The process leaves the group only when that was the last descriptor
/// of the socket: if a duplicate remains, it takes the closed one's role. A scan of the table,
/// on this rare path only.
pub(crate) fn listener_closed(fd: c_int, idx: usize, st: u64) {
    let pid = my_pid();
    let own_class = |s: u64| matches!(s, ST_SPLIT | ST_DUP_OWN | ST_SPLITTING);
    let shared_class = |s: u64| matches!(s, ST_SHARED | ST_DUP_SHARED | ST_SPLITTING);
    let same_socket: &dyn Fn(u64) -> bool = match st {
        ST_SPLIT | ST_DUP_OWN => &own_class,
        ST_SHARED | ST_DUP_SHARED => &shared_class,
        _ => &|_| false,
    };
    let other = (0..MAX_FDS).find(|&j| {
        let e = FDS[j].load(Ordering::Acquire);
        j != fd as usize
            && e != 0
            && (e >> 32) as u32 == pid
            && (e & 0xff) as usize == idx
            && same_socket(state_of(e))
    });
    let Some(j) = other else {
        registration::leave(idx);
        return;
    };
    let t = tagged(pid, fd);
    let promote = |role: &core::sync::atomic::AtomicU64, from: u64, to: u64| {
        if role
            .compare_exchange(t, tagged(pid, j as c_int), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let _ = FDS[j].compare_exchange(
                entry(pid, from, idx),
                entry(pid, to, idx),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    };
    match st {
        ST_SPLIT => promote(&OWN_FD[idx], ST_DUP_OWN, ST_SPLIT),
        ST_SHARED => promote(&SHARED_FD[idx], ST_DUP_SHARED, ST_SHARED),
        _ => {}
    }
}

/// Ends a split of `fd` that this thread holds in [`ST_SPLITTING`], with the state `st`. False if
/// the app closed `fd` meanwhile (the close hook cleared the entry and left the group): then what
/// this split published about `fd` is withdrawn, since the number may be the app's again.
fn finish_split(fd: c_int, idx: usize, pid: u32, st: u64) -> bool {
    let done = FDS[fd as usize].compare_exchange(
        entry(pid, ST_SPLITTING, idx),
        entry(pid, st, idx),
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
    if done.is_err() {
        let t = tagged(pid, fd);
        let _ = SHARED_FD[idx].compare_exchange(t, 0, Ordering::AcqRel, Ordering::Relaxed);
        let _ = OWN_FD[idx].compare_exchange(t, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
    done.is_ok()
}

/// True while this thread still holds `fd` in [`ST_SPLITTING`] for address `idx` (the app did not
/// close it meanwhile).
fn still_splitting(fd: c_int, idx: usize, pid: u32) -> bool {
    FDS[fd as usize].load(Ordering::Acquire) == entry(pid, ST_SPLITTING, idx)
}

/// The first look at an inherited listener: split if the controller registers our own socket
/// now, keep the shared socket otherwise. Returns the descriptor's new state.
fn first_split(fd: c_int, idx: usize, pid: u32) -> u64 {
    if LEFT[idx].load(Ordering::Relaxed) != pid {
        let result = registration::register_fresh(idx, fd, SYNC_TIMEOUT_MS);
        registration::note_attempt(idx, &result);
        if let Ok(own) = result {
            if swap_in(fd, idx, own, pid) {
                return ST_SPLIT;
            }
        }
        // A shared socket that another worker already shut down (a worker respawned after the
        // group formed) is of no use: serve on an own socket, registered later by the thread.
        if still_splitting(fd, idx, pid)
            && int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(0)
        {
            if let Some(own) = create_own(fd, own_backlog(idx)) {
                if swap_in(fd, idx, own, pid) {
                    return ST_SPLIT;
                }
            }
        }
    }
    if still_splitting(fd, idx, pid) {
        keep_shared(fd, idx, pid);
    }
    ST_SHARED
}

/// Remembers that this process keeps the shared listener at `fd`, with a private duplicate for
/// the registration thread.
fn keep_shared(fd: c_int, idx: usize, pid: u32) {
    SHARED_FD[idx].store(tagged(pid, fd), Ordering::Release);
    if fd_if_ours(SHARED_REF[idx].load(Ordering::Acquire), pid).is_none() {
        // SAFETY: duplicates the listener the app is waiting on, close-on-exec, high.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high_fd_floor()) };
        if dup >= 0 {
            SHARED_REF[idx].store(tagged(pid, dup), Ordering::Release);
        } else {
            // Without the duplicate the thread cannot register this process later: say so,
            // instead of leaving it unbalanced without a word (it keeps serving on the shared
            // listener either way).
            shim_log!(
                "cannot keep a duplicate of the shared listener (fd {fd}) at fd {} or above: {}; \
                 this process is not registered later if the controller is not reachable now \
                 (raise the descriptor limit)",
                high_fd_floor(),
                errno()
            );
        }
    }
}

/// Replaces the shared listener at `fd` (address `idx`) with `own`, this process's registered
/// socket; `own` is consumed. The caller holds `fd` in [`ST_SPLITTING`] (or is the first look).
/// Order: shut the shared socket down (the controller attached the migrating program before it
/// said Ok, so its queue moves to registered sockets), delete it from this process's epoll
/// instances, `dup3`, add the own socket back.
///
/// The app may close `fd` while this runs (another thread): the entry is checked before the
/// shutdown and again just before `dup3`, so that a number the app reused is left alone (a
/// window of a few system calls remains between the last check and `dup3`).
fn swap_in(fd: c_int, idx: usize, own: c_int, pid: u32) -> bool {
    // SAFETY: fcntl query on the app's descriptor, which it is waiting on.
    let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fdfl < 0 || !still_splitting(fd, idx, pid) {
        // SAFETY: our own socket.
        unsafe { Real::CLOSE()(own) };
        return false;
    }
    // Take the shared original out of the reuseport group (in every process: the open file is
    // shared). ENOTCONN: another worker already did it.
    // SAFETY: shutdown of the inherited listener, which is what this split is for.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    let mut moved = [false; MAX_EPOLLS];
    for (k, rec) in EPOLLS[idx].iter().enumerate() {
        let Some(epfd) = fd_if_ours(rec.key.load(Ordering::Acquire), pid) else { continue };
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: removes the shared socket from an epoll instance this process added it to.
        moved[k] = unsafe { Real::EPOLL_CTL()(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) } == 0;
    }
    let own_cookie = cookie(own).unwrap_or(0);
    let cloexec = if fdfl & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // SAFETY: replaces the descriptor `fd` (the inherited listener) with our own socket.
    let ok = still_splitting(fd, idx, pid) && unsafe { Real::DUP3()(own, fd, cloexec) } >= 0;
    if !ok && still_splitting(fd, idx, pid) {
        shim_log!("split of fd {fd}: dup3: {}", errno());
    }
    // SAFETY: our own descriptor (duplicated at `fd` now, or useless).
    unsafe { Real::CLOSE()(own) };
    for (k, rec) in EPOLLS[idx].iter().enumerate() {
        let Some(epfd) = fd_if_ours(rec.key.load(Ordering::Acquire), pid) else { continue };
        if moved[k] && still_splitting(fd, idx, pid) {
            let mut ev = libc::epoll_event {
                events: rec.events.load(Ordering::Relaxed),
                u64: rec.data.load(Ordering::Relaxed),
            };
            // SAFETY: adds the descriptor back to the instance it was deleted from above.
            if unsafe { Real::EPOLL_CTL()(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                shim_log!("split of fd {fd}: epoll_ctl ADD to {epfd}: {}", errno());
            }
        }
        rec.key.store(0, Ordering::Release);
    }
    if !ok {
        return false;
    }
    SHARED_FD[idx].store(0, Ordering::Release);
    OWN_COOKIE[idx].store(own_cookie, Ordering::Relaxed);
    OWN_FD[idx].store(tagged(pid, fd), Ordering::Release);
    if let Some(addr) = config().addrs[idx] {
        shim_log!("own listening socket on {addr} (fd {fd})");
    }
    true
}

/// Swaps in the sockets the registration thread registered, if any: a hook calls this before it
/// waits or accepts. Fast path: two loads.
#[inline(always)]
pub(crate) fn swap_pending() {
    let pid = my_pid();
    if PENDING_PID.load(Ordering::Acquire) == pid && pid != 0 {
        let _ = std::panic::catch_unwind(|| swap_pending_slow(pid));
    }
}

#[cold]
fn swap_pending_slow(pid: u32) {
    if in_vfork_child() || PENDING_PID.swap(0, Ordering::AcqRel) != pid {
        return;
    }
    for idx in 0..config().n_addrs {
        let Some(own) = fd_if_ours(PENDING[idx].swap(0, Ordering::AcqRel), pid) else { continue };
        let fd = fd_if_ours(SHARED_FD[idx].load(Ordering::Acquire), pid);
        let claimed = fd.filter(|&fd| {
            (fd as usize) < MAX_FDS
                && FDS[fd as usize]
                    .compare_exchange(
                        entry(pid, ST_SHARED, idx),
                        entry(pid, ST_SPLITTING, idx),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
        });
        match claimed {
            Some(fd) => {
                let st = if swap_in(fd, idx, own, pid) { ST_SPLIT } else { ST_SHARED };
                finish_split(fd, idx, pid, st);
            }
            None if fd.is_some_and(|fd| {
                (fd as usize) < MAX_FDS
                    && FDS[fd as usize].load(Ordering::Acquire) == entry(pid, ST_SPLITTING, idx)
            }) =>
            {
                // Another thread is splitting this listener (and takes the pending socket).
                PENDING[idx].store(tagged(pid, own), Ordering::Release);
                PENDING_PID.store(pid, Ordering::Release);
            }
            None => {
                // No shared listener to replace: either the app closed it (the close hook left
                // the group then), or a rescue swapped in an own socket while the thread was
                // registering this one. Drop this registration, not the group: the thread
                // registers the socket the process serves on.
                // SAFETY: our own pending socket, published nowhere else.
                unsafe { Real::CLOSE()(own) };
                if LEFT[idx].load(Ordering::Acquire) != pid {
                    registration::drop_registration(idx);
                }
            }
        }
    }
}

/// `accept` on `fd` failed (EINVAL, EMFILE, ENFILE) or `poll` said POLLHUP. If `fd` is the shared listener of this process and
/// another process shut it down, split right here; true if `fd` is an own socket now (accept
/// again). Sleeps 100 ms when nothing can be done, so that a caller's loop cannot spin.
#[cold]
pub(crate) fn rescue_dead_shared(fd: c_int) -> bool {
    std::panic::catch_unwind(|| rescue_slow(fd)).unwrap_or(false)
}

fn rescue_slow(fd: c_int) -> bool {
    if fd < 0 || fd as usize >= MAX_FDS || in_vfork_child() {
        return false;
    }
    let pid = my_pid();
    let slot = &FDS[fd as usize];
    let e = slot.load(Ordering::Acquire);
    if (e >> 32) as u32 != pid || state_of(e) != ST_SHARED {
        return false;
    }
    let idx = (e & 0xff) as usize;
    if int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != Some(0) {
        return false; // still listening: some other error
    }
    // A socket the thread registered already?
    PENDING_PID.store(pid, Ordering::Release);
    swap_pending();
    loop {
        let e = slot.load(Ordering::Acquire);
        if (e >> 32) as u32 != pid {
            return false;
        }
        match state_of(e) {
            ST_SPLIT => return true,
            ST_SPLITTING => wait_a_moment(),
            ST_SHARED => {
                if slot
                    .compare_exchange(
                        e,
                        entry(pid, ST_SPLITTING, idx),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    break;
                }
            }
            _ => return false,
        }
    }
    // A registration the thread has under way wins over a second one of our own: wait for it (a
    // little longer than a synchronous registration takes).
    let wait = 2 * SYNC_TIMEOUT_MS as usize;
    let mut own = registration::take_pending(idx, pid, wait).or_else(|| {
        let result = registration::register_fresh(idx, fd, SYNC_TIMEOUT_MS);
        registration::note_attempt(idx, &result);
        result.ok()
    });
    if own.is_none() {
        own = create_own(fd, own_backlog(idx));
        if own.is_some() {
            shim_log!(
                "the shared socket (fd {fd}) was shut down by another worker and the controller \
                 did not register this one: serving on an own socket, registering it later"
            );
        }
    }
    let ok = own.is_some_and(|own| swap_in(fd, idx, own, pid));
    if !finish_split(fd, idx, pid, if ok { ST_SPLIT } else { ST_SHARED }) {
        return false; // the app closed it meanwhile
    }
    if !ok {
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        // SAFETY: nanosleep reads one timespec; a null remainder is allowed.
        unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
    }
    ok
}

/// Remembers (ADD, MOD) or forgets (DEL) the epoll registration of a shared listener, after the
/// real `epoll_ctl` succeeded.
pub(crate) fn record_epoll(epfd: c_int, op: c_int, fd: c_int, event: *const libc::epoll_event) {
    if fd < 0 || fd as usize >= MAX_FDS || epfd < 0 {
        return;
    }
    let pid = my_pid();
    let e = FDS[fd as usize].load(Ordering::Acquire);
    if (e >> 32) as u32 != pid || state_of(e) != ST_SHARED || in_vfork_child() {
        return;
    }
    let idx = (e & 0xff) as usize;
    let key = tagged(pid, epfd);
    let recs = &EPOLLS[idx];
    let found = recs.iter().find(|r| r.key.load(Ordering::Acquire) == key);
    if op == libc::EPOLL_CTL_DEL {
        if let Some(r) = found {
            r.key.store(0, Ordering::Release);
        }
        return;
    }
    if event.is_null() {
        return;
    }
    // SAFETY: the caller's event, which the real epoll_ctl just read successfully.
    let ev = unsafe { ptr::read_unaligned(event) };
    let rec = found.or_else(|| {
        recs.iter().find(|r| {
            let k = r.key.load(Ordering::Acquire);
            // Free, or left over by another process (fork copies this table).
            (k == 0 || (k >> 32) as u32 != pid)
                && r.key.compare_exchange(k, key, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        })
    });
    match rec {
        Some(r) => {
            r.events.store(ev.events, Ordering::Relaxed);
            r.data.store(ev.u64, Ordering::Relaxed);
        }
        None => shim_log!("more than {MAX_EPOLLS} epoll instances wait on fd {fd}: not all move"),
    }
}
