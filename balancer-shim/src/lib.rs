//! `libbalancer_shim.so`: preloaded (LD_PRELOAD) into a prefork app server (uWSGI, gunicorn) so
//! that each worker gets its own SO_REUSEPORT listening socket, registers it with the reuselb
//! controller, and keeps the shared load map current with no system call added per request.
//!
//! **By design, the shim is libc-only and allocation-free in the hooks.** It runs inside someone
//! else's process, under every `accept` and `close` of the app server: an allocator call there
//! could re-enter the app's allocator (or a profiler's) from a hook called inside it, deadlock in
//! a child forked while another thread held the allocator's lock, or simply cost more than the
//! accounting itself. So the hooks use fixed-size arrays of atomics and stack buffers only, take
//! no lock, and call libc directly; the one thread the shim starts (registration) may allocate
//! its own stack, nothing more. No dependency beyond `libc` and `balancer-common` (no_std).
//!
//! Modules, in the order a call meets them:
//! - `config`: the balanced addresses and the controller's socket, from the environment.
//! - `real`: the real libc functions (dlsym), so that a hook can call what it replaces.
//! - `hooks`: the exported functions (`accept`, `close`, `epoll_ctl`, ...).
//! - `io`: the exported read and write functions, where a request is answered or starts.
//! - `split`: which descriptor is an inherited balanced listener, and replacing it with the
//!   worker's own socket.
//! - `accounting`: counting accepted and completed connections in the shared load table.
//! - `state`: the per-process state all of these share (pid-tagged atomics).
//! - `process`: this process's pid, the vfork check, the registration thread's id, pid tagging.
//! - `registration`: the background thread and the protocol with the controller.
//! - `loadmap`: the check of the load map descriptor (fdinfo) before it is mapped.
//! - `sock`: socket helpers (addresses, options, high descriptor numbers, a fresh listener made
//!   like an inherited one); they know nothing of registrations or splits.
//! - `cmsg`: sending and receiving one descriptor over a unix socket.
//! - `owned`: the cleanup guard of descriptors being set up, and the disposal of received ones.
//! - `log`: one-line messages to stderr without allocation.
//! - `notices`: what the shim sees and cannot balance (a listening unix socket), said at once.
//!
//! Imports run one way: hooks and io on top; then split, accounting and notices; registration;
//! then sock, loadmap, cmsg, owned, state, config, log, real and process at the bottom (process
//! and real depend on nothing of the crate).
//!
//! What it does, per process:
//! - `bind` to a balanced address (`REUSELB_LISTEN`): sets SO_REUSEADDR and SO_REUSEPORT first, so
//!   the workers' own sockets can bind the same port later; `listen` records the backlog.
//! - Socket split, only once the controller took the worker (see `split` for the rules): at
//!   the first wait (`epoll_ctl` ADD, `poll`, `select`) or accept on an inherited listener of a
//!   balanced address, the worker registers a fresh own socket synchronously; on Ok it shuts the
//!   shared socket down (its queue migrates: the controller attached the program first) and
//!   `dup3`s the own socket over the same descriptor number (flags and backlog kept). With no
//!   controller, nothing changes: the worker keeps the shared socket, as without the shim.
//!   Processes that never wait/accept (master, mules, spooler) never split.
//! - A background thread retries every second while the controller is absent or gone, registers
//!   late workers (their hooks swap the own socket in), and keeps each registration connection
//!   open; closing it (also at once when the app closes its listener) is how a worker leaves.
//! - Accounting: `accept`/`accept4` on an own socket marks the new descriptor and adds 1 to the
//!   slot's `accepted`; its first write (the answer), or its close if it closes unanswered
//!   (`close`, `dup2`/`dup3` over it, `close_range`), adds 1 to `completed`; data read on an
//!   answered connection (kept alive) starts the next request. Plain atomic adds on shared memory, mapped only after
//!   `/proc/self/fdinfo` showed it is the load map (no `bpf()` call).
//!
//! Rules kept here: no panic crosses the C boundary (the hooks do no indexing that can fail and
//! the slow paths run under `catch_unwind`), the hooks never allocate or take a blocking lock,
//! every piece of per-process state is tagged with the pid so that what fork copies is never
//! mistaken for the child's own, and a hook about to change per-process state checks `getpid()`
//! first, because a vfork child runs the hooks in its parent's memory. The shim's own long-lived
//! descriptors sit high (close-on-exec), out of reach of apps that close descriptors by number.
#![deny(unsafe_op_in_unsafe_fn)]

mod accounting;
mod cmsg;
mod config;
mod hooks;
mod io;
mod loadmap;
mod log;
mod notices;
mod owned;
mod process;
mod real;
mod registration;
mod sock;
mod split;
mod state;

pub use hooks::*;

// ---------------------------------------------------------------------------------------------
// Constructor and fork handling

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    process::set_my_pid();
    // SAFETY: the constructor runs before the program's own code, on its only thread.
    unsafe { config::load() };
    // Resolve the real functions now, while nothing else runs (dlsym may allocate).
    real::resolve_all();
    // SAFETY: registers a handler that only touches our own atomics and descriptors.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
}

extern "C" fn after_fork_child() {
    process::set_my_pid();
    registration::forget_parent_registrations();
}
