//! What the shim sees and cannot balance, said once, at the moment it happens: a listening unix
//! socket (SO_REUSEPORT groups exist for TCP and UDP only, so reuselb cannot split or steer it).
//! Only in a process that was asked to balance something (`REUSELB_LISTEN` set); the line
//! names the socket and how to move it to a loopback port. Libc calls and a stack buffer only,
//! like every hook.

use core::{
    ffi::c_int,
    mem::{size_of, zeroed},
};

use crate::{config::config, log::shim_log, sock::int_opt};

/// Called by the `listen` hook: says so if `fd` is a unix stream socket.
pub(crate) fn on_listen(fd: c_int) {
    if config().n_addrs == 0 {
        return;
    }
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into our sockaddr_un.
    let r = unsafe { libc::getsockname(fd, (&mut sun as *mut libc::sockaddr_un).cast(), &mut len) };
    if r != 0
        || c_int::from(sun.sun_family) != libc::AF_UNIX
        || int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return;
    }
    let mut path = [0u8; 108];
    for (d, s) in path.iter_mut().zip(sun.sun_path.iter()) {
        *d = *s as u8;
    }
    // An abstract socket starts with a NUL: show it as `@name`, as ss(8) does.
    let (prefix, name) = match path.split_first() {
        Some((0, rest)) => ("@", rest),
        _ => ("", &path[..]),
    };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = core::str::from_utf8(&name[..end]).unwrap_or("?");
    // One line of at most 511 bytes (the log's stack buffer): the path is at most 108 of them.
    shim_log!(
        "unix socket {prefix}{name} is not balanced: SO_REUSEPORT is TCP/UDP only. To balance, \
         listen on a loopback port (uWSGI `socket = 127.0.0.1:PORT`, gunicorn `--bind \
         127.0.0.1:PORT`), point nginx there (`uwsgi_pass 127.0.0.1:PORT;`) and run \
         `reuselb run --listen 127.0.0.1:PORT`"
    );
}
