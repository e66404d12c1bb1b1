//! Forwards the program's aya-log records into this process's `log` stream.
//!
//! The records come through a ring buffer; a small thread waits on it and flushes. The logger must
//! live as long as the program, so the [`Group`](crate::Group) owns the forwarder.
use std::{
    os::fd::AsFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

use crate::sys;

/// How long the thread sleeps in poll before it checks whether it should stop.
const POLL: Duration = Duration::from_millis(200);

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
                while !stop_thread.load(Ordering::Relaxed) {
                    match sys::poll_readable(&[logger.as_fd()], POLL).as_deref() {
                        Ok([true]) => logger.flush(),
                        Ok(_) => {}
                        // Not expected of one valid descriptor; wait as a poll would, not spin.
                        Err(_) => std::thread::sleep(POLL),
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
