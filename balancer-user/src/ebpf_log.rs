//! Forwards the program's aya-log records into this process's `log` stream.
//!
//! The records come through a ring buffer; a small thread waits on it and flushes. The logger must
//! live as long as the program, so the [`Group`](crate::Group) owns the forwarder.
use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// How long the thread sleeps in poll before it checks whether it should stop.
const POLL_MS: i32 = 200;

pub struct LogForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogForwarder {
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        Ok(Self::from_logger(EbpfLogger::init(ebpf)?))
    }

    /// Forwards from a logger found otherwise (for an adopted, pinned program: by its id).
    pub fn from_logger(mut logger: EbpfLogger<&'static dyn log::Log>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let thread = std::thread::Builder::new()
            .name("reuselb-ebpf-log".into())
            .spawn(move || {
                let mut pfd =
                    libc::pollfd { fd: logger.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                while !stop_thread.load(Ordering::Relaxed) {
                    // SAFETY: one valid pollfd.
                    let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
                    if ready > 0 {
                        logger.flush();
                    }
                }
                logger.flush();
            })
            .expect("spawning the eBPF log thread");
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
