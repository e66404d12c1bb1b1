//! Registration: a background thread per process registers each own socket with the controller
//! (`REUSELB_SOCKET`), maps the load table it gets back, keeps the connection open (closing it is
//! how the worker leaves the group) and retries every second while the controller is absent or
//! gone.

use core::{
    ffi::{c_char, c_int},
    mem::{size_of, zeroed},
    ptr,
    sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering},
};

use balancer_common::{
    protocol::{Register, Reply, Status},
    LOADS_MMAP_LEN,
};

use crate::{
    cmsg::{recv_with_fd, send_with_fd},
    config::{config, MAX_ADDRS},
    log::{errno, shim_log, DisplayAddr},
    real::Real,
    state::{my_pid, OWN_FD, REGS, THREAD_PID},
};

/// Connection to the controller per balanced address (this process's; -1 if none).
static CONN_FDS: [AtomicI32; MAX_ADDRS] = [const { AtomicI32::new(-1) }; MAX_ADDRS];
static NEXT_RETRY_MS: [AtomicUsize; MAX_ADDRS] = [const { AtomicUsize::new(0) }; MAX_ADDRS];
/// Set once a "controller not reachable" line was logged (per process, reset after registration).
static SAID_UNREACHABLE: AtomicBool = AtomicBool::new(false);

/// In the child after fork: the parent's registrations and connections are not ours.
pub(crate) fn forget_parent_registrations() {
    THREAD_PID.store(0, Ordering::Relaxed);
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

fn registration_loop(pid: u32) {
    loop {
        if my_pid() != pid || THREAD_PID.load(Ordering::Acquire) != pid {
            return;
        }
        let n = config().n_addrs;
        // SAFETY: pollfd is plain data; all zeroes is a valid value.
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
            if got > 0 || (got < 0 && errno().raw_os_error() == Some(libc::EAGAIN)) {
                continue; // nothing is expected on this connection; ignore
            }
            // Keep counting in the load map we have: the program stays attached and keeps
            // reading it. A new registration replaces it.
            let fd = CONN_FDS[idx].swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                // SAFETY: our own connection to the controller.
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

fn set_timeout(s: c_int, opt: c_int, tv: libc::timeval) {
    // SAFETY: setsockopt reads one timeval from our stack.
    unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

fn register(idx: usize, listener: c_int, pid: u32) -> Result<(), RegisterError> {
    let cfg = config();
    // SAFETY: socket() with constant arguments.
    let s = unsafe { Real::SOCKET()(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(RegisterError::Unreachable);
    }
    // SAFETY: our own socket, not yet published.
    let close_s = || unsafe { Real::CLOSE()(s) };
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
                "controller not reachable at {path} ({}); serving with the kernel's hash, \
                 retrying every second",
                errno()
            );
        }
        close_s();
        return Err(RegisterError::Unreachable);
    }
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    set_timeout(s, libc::SO_RCVTIMEO, tv);
    set_timeout(s, libc::SO_SNDTIMEO, tv);
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
    // SAFETY: a descriptor we received and own (or -1, which close rejects harmlessly).
    let close_map = || unsafe { Real::CLOSE()(map_fd) };
    let addr = cfg.addrs[idx];
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            shim_log!("registration of {addr:?}: bad reply from the controller: {e}");
            if map_fd >= 0 {
                close_map();
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
            close_map();
        }
        close_s();
        return Err(RegisterError::Rejected);
    }
    // SAFETY: maps the descriptor the controller sent; a failure is reported as MAP_FAILED.
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
    close_map();
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
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
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
