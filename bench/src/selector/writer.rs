//! The writer of a contended run: a thread that does to a group's load table what the workers'
//! shims do when connections complete, pinned to a CPU other than the client's; and the CPU
//! masks it and the client are pinned with. Invariant: a [`Writer`] stops when asked, or by
//! itself after [`WRITER_LIMIT`]; dropping it stops it.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use balancer_user::shared_loads::SharedLoads;

/// The writer of a contended run stops by itself after this long, whatever happens to the run.
pub(super) const WRITER_LIMIT: Duration = Duration::from_secs(60);
/// Completions the writer makes between two looks at its stop flag and clock.
const WRITER_BATCH: u64 = 256;

/// CPU masks of the calling thread (sched_getaffinity / sched_setaffinity, pid 0).
pub(super) mod affinity {
    use std::{io, mem::size_of};

    pub fn get() -> io::Result<libc::cpu_set_t> {
        // SAFETY: cpu_set_t is plain bits; all zeros is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
        let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }

    pub fn set(set: &libc::cpu_set_t) -> io::Result<()> {
        // SAFETY: the kernel reads size_of::<cpu_set_t>() bytes from `set`.
        let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The CPUs in `set`, in order.
    pub fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
        // SAFETY: CPU_ISSET only reads the set, for indices below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, set) }).collect()
    }

    /// Pins the calling thread to `cpu`.
    pub fn pin(cpu: usize) -> io::Result<()> {
        // SAFETY: cpu_set_t is plain bits; all zeros is a valid (empty) set.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes one bit of the set; `cpu` comes from `cpus`, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        set(&one)
    }
}

/// Where the client (whose CPU runs the program: on loopback the SYN is processed in the
/// connecting thread's softirq) and the writer run.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement {
    pub(super) client: Option<usize>,
    pub(super) writer: Option<usize>,
}

impl Placement {
    pub(super) fn describe(&self) -> String {
        match (self.client, self.writer) {
            (Some(c), Some(w)) => format!("the client (and so the program) pinned to CPU {c}, the writer to CPU {w}"),
            _ => "nothing pinned (fewer than 2 CPUs allowed): the writer only time-shares the CPU with the \
                  client, so the contended figures do not show contention"
                .to_string(),
        }
    }
}

/// The table a contended run writes to, and its slots.
pub(super) struct WriteTarget {
    pub(super) loads: Arc<SharedLoads>,
    pub(super) slots: Vec<u32>,
}

/// What a writer did.
pub(super) struct WriterReport {
    pub(super) writes: u64,
    pub(super) secs: f64,
    /// It stopped at [`WRITER_LIMIT`] rather than when asked.
    pub(super) timed_out: bool,
}

/// A thread doing to the shared load table what the workers' shims do when connections complete
/// (balancer-shim/src/accounting.rs), in a tight loop: for a random slot of the group, an atomic
/// add of 1 to `completed`, an atomic sub of 1 from `inflight` and, when that took it to 0, a
/// store of 1 to the slot's `idle` byte (so far what [`SharedLoads::add_completed`] does), an
/// atomic add of 1 back to `inflight` (so the loads the program sees stay what the bench's own
/// connections make them), and a store of CLOCK_MONOTONIC (the vDSO, as the shim reads it) to
/// `progress`. Bounded: it stops when asked, or after
/// [`WRITER_LIMIT`].
pub(super) struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<WriterReport>>,
}

impl Writer {
    /// Starts the writer and returns once it is writing.
    pub(super) fn start(target: &WriteTarget, cpu: Option<usize>, seed: u64) -> Result<Self> {
        if target.slots.is_empty() {
            bail!("a contended run needs at least one slot to write to");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (loads, slots, flag) = (target.loads.clone(), target.slots.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    if let Err(e) = affinity::pin(c) {
                        let _ = ready_tx.send(Err(format!("pinning the writer to CPU {c}: {e}")));
                        return WriterReport { writes: 0, secs: 0.0, timed_out: false };
                    }
                }
                let _ = ready_tx.send(Ok(()));
                write_loop(&loads, &slots, &flag, seed)
            })
            .context("spawning the writer thread")?;
        let mut writer = Writer { stop, handle: Some(handle) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(writer),
            Ok(Err(e)) => {
                writer.finish()?;
                Err(anyhow!(e))
            }
            Err(_) => Err(anyhow!("the writer thread ended before it started writing")),
        }
    }

    /// Stops the writer and says what it did.
    pub(super) fn finish(&mut self) -> Result<WriterReport> {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().context("the writer was already stopped")?;
        handle.join().map_err(|_| anyhow!("the writer thread panicked"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.finish();
        }
    }
}

fn write_loop(loads: &SharedLoads, slots: &[u32], stop: &AtomicBool, seed: u64) -> WriterReport {
    let started = Instant::now();
    let mut x = seed | 1;
    let mut writes = 0u64;
    let mut timed_out = false;
    while !stop.load(Ordering::Relaxed) {
        if started.elapsed() > WRITER_LIMIT {
            timed_out = true;
            break;
        }
        for _ in 0..WRITER_BATCH {
            // xorshift64: cheap, and no two runs pick the same sequence of slots.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = slots[((x >> 32) as usize) % slots.len()];
            loads.add_completed(slot, 1);
            loads.add_inflight(slot, 1);
            loads.mark_progress(slot);
        }
        writes += WRITER_BATCH;
    }
    WriterReport { writes, secs: started.elapsed().as_secs_f64(), timed_out }
}

/// Every slot of `table` 1 more in flight (`busy`), or 1 less, with its idle byte cleared or set
/// to match.
pub(super) fn set_busy(table: &WriteTarget, busy: bool) {
    for &slot in &table.slots {
        table.loads.add_inflight(slot, if busy { 1 } else { -1 });
        table.loads.set_idle(slot, !busy);
    }
}
