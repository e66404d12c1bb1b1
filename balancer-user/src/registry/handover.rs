//! Listeners the controller creates for workers that cannot create one that joins the group
//! (`Register::WANT_SOCKET`): a worker of an app server whose master bound the shared socket as
//! root and then dropped privileges (uWSGI `uid`/`gid`, gunicorn `--user`/`--group`).
//!
//! # Why the controller creates the socket
//!
//! The kernel puts a socket into an address's SO_REUSEPORT group only if it has the same owner
//! uid as the sockets already in it (`sk_reuseport_match` compares `sock_i_uid`); a listener of
//! another uid fails to bind with EADDRINUSE. The group's owner is whoever bound the shared socket
//! (root, before the master dropped privileges); a worker running as `nobody` can never add a
//! socket of its own. The master could create the sockets before it drops privileges, but only if
//! every app server were changed to; the controller runs as root's uid already, so it creates the
//! worker's listener itself (same address, options and backlog as the shared socket), puts it in
//! the group, and hands it to the worker with the reply. The worker installs it where it would
//! have installed its own; the group keeps one owner uid.
//!
//! # Invariants
//!
//! - The worker proves which address it serves by handing over the shared socket, which passes
//!   every check of an ordinary registration (a TCP listener with SO_REUSEPORT on a balanced
//!   address, in the service's network namespace). Holding that socket already lets a process
//!   accept every connection of the service, so the socket it gets back gives it nothing more.
//! - The controller creates sockets only as its own uid, and only when that uid owns the shared
//!   socket: a socket of another uid could not join the group (refused, with the reason).
//! - The controller creates sockets only in its own network namespace: a shared socket of
//!   another one (a Kubernetes pod whose master drops privileges, served by a node daemon) is
//!   refused with the reason; that worker keeps serving on the shared socket, unbalanced.
use std::os::fd::{BorrowedFd, OwnedFd};

use balancer_common::protocol::Status;

use super::admission::Rejection;
use crate::sys;

/// Backlog of a listener created for a worker when neither the shared socket (shut down) nor a
/// registered worker's listener tells the app's own (the shim's default too).
const DEFAULT_BACKLOG: u32 = 128;

/// A listener for the worker that handed over `shared` (checked already: a TCP socket with
/// SO_REUSEPORT on a balanced address), created as this process's uid in its network namespace,
/// with the backlog of `shared`, or of `registered` (a worker's listener of the same service)
/// when `shared` was shut down already by another worker; or why not.
pub(super) fn listener_for(
    shared: BorrowedFd<'_>,
    registered: Option<BorrowedFd<'_>>,
) -> Result<OwnedFd, Rejection> {
    let internal = |e: sys::Error| Rejection::new(Status::Internal, e.to_string());
    let theirs = sys::netns_cookie(shared).map_err(internal)?;
    let ours = sys::own_netns_cookie().map_err(internal)?;
    if theirs != ours {
        return Err(Rejection::new(
            Status::WrongNamespace,
            "the controller creates listeners only in its own network namespace; this socket is \
             in another",
        ));
    }
    let owner = sys::socket_owner_uid(shared).map_err(internal)?;
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(Rejection::new(
            Status::Internal,
            format!(
                "shared socket of uid {owner}, controller uid {me}: a listener it creates could \
                 not join the group"
            ),
        ));
    }
    let backlog = match sys::listen_backlog(shared).map_err(internal)? {
        Some(b) => b,
        None => registered
            .and_then(|r| sys::listen_backlog(r).ok().flatten())
            .unwrap_or(DEFAULT_BACKLOG),
    };
    sys::listener_like(shared, backlog)
        .map_err(|e| Rejection::new(Status::Internal, format!("creating the listener: {e}")))
}
