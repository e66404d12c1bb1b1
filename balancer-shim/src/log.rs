//! Logging without allocation: one line per call, formatted into a stack buffer and written to
//! stderr with a single `write`, prefixed with `reuselb-shim[pid]: `.

use core::fmt::{self, Write as _};

use crate::state::my_pid;

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

/// Writes one line to stderr (cut at 511 bytes).
pub(crate) fn log(args: fmt::Arguments<'_>) {
    let mut b = StackBuf { buf: [0; 512], len: 0 };
    let _ = write!(b, "reuselb-shim[{}]: ", my_pid());
    let _ = b.write_fmt(args);
    if b.len == b.buf.len() {
        b.len -= 1;
    }
    b.buf[b.len] = b'\n';
    // SAFETY: writes b.len + 1 initialised bytes of our own buffer to stderr.
    unsafe { libc::write(2, b.buf.as_ptr().cast(), b.len + 1) };
}

/// `format!`-style logging through [`log`].
macro_rules! shim_log {
    ($($t:tt)*) => { $crate::log::log(format_args!($($t)*)) };
}
pub(crate) use shim_log;

/// The last OS error, for log lines.
pub(crate) fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Shows an optional address, `?` if none.
pub(crate) struct DisplayAddr(pub Option<std::net::SocketAddr>);

impl fmt::Display for DisplayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("?"),
        }
    }
}
