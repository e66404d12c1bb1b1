//! Logging without allocation: one line per call, formatted into a stack buffer and written to
//! stderr with a single `write`, prefixed with `reuselb-shim[pid]: `.

use core::fmt::{self, Write as _};

use crate::process::my_pid;

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

/// An OS error number, shown with its text (strerror_r into a stack buffer: no allocation, unlike
/// `std::io::Error`'s Display).
pub(crate) struct Errno(pub core::ffi::c_int);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 128];
        // SAFETY: strerror_r (the XSI one in the libc crate) writes a NUL-terminated text of at
        // most `buf.len()` bytes into our buffer.
        let r = unsafe { libc::strerror_r(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
        match core::str::from_utf8(&buf[..end]) {
            Ok(text) if r == 0 && !text.is_empty() => write!(f, "{text} (os error {})", self.0),
            _ => write!(f, "os error {}", self.0),
        }
    }
}

/// The calling thread's last OS error, for log lines.
pub(crate) fn errno() -> Errno {
    // SAFETY: __errno_location returns this thread's errno.
    Errno(unsafe { *libc::__errno_location() })
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
