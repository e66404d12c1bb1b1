//! A pool of listeners on one address, each in a slot of one balanced [`Group`].
use std::{
    io::{self, ErrorKind},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
};

use anyhow::{Context, Result};
use balancer_common::Policy;
use balancer_user::{listener::bind_reuseport, Group, GroupOptions, Mode};
use rustix::thread::{sched_setaffinity, CpuSet};

/// Backlog large enough to hold every connection a test leaves unaccepted.
pub const BACKLOG: i32 = 4096;

pub struct Pool {
    pub addr: SocketAddr,
    /// Listener `i` is in slot `slots[i]`.
    pub listeners: Vec<TcpListener>,
    pub slots: Vec<u32>,
    pub group: Group,
}

impl Pool {
    /// `n` non-blocking listeners on an ephemeral port of `ip`, each in a slot, program attached.
    /// Call it inside the test's namespace.
    pub fn new(ip: &str, n: usize, policy: Policy, mode: Mode) -> Result<Self> {
        Self::with_options(ip, n, GroupOptions { policy, mode, ..Default::default() })
    }

    /// As [`Pool::new`], with every group option.
    pub fn with_options(ip: &str, n: usize, options: GroupOptions) -> Result<Self> {
        let ip: IpAddr = ip.parse().context("test address")?;
        let mut group = Group::new(options)
            .context("loading the program (needs root and a BPF-capable kernel)")?;
        let first = bind_reuseport(SocketAddr::new(ip, 0), BACKLOG)
            .context("binding the first listener")?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(
                bind_reuseport(addr, BACKLOG).context("binding a listener on the shared port")?,
            );
        }
        let mut slots = Vec::new();
        for l in &listeners {
            l.set_nonblocking(true)?;
            slots.push(group.insert(l, std::process::id(), 1)?.0);
        }
        group.attach(&listeners[0]).context("attaching the program")?;
        Ok(Self { addr, listeners, slots, group })
    }

    /// Opens `count` connections one after the other and leaves them unaccepted.
    pub fn connect_many(&self, count: usize) -> Result<Vec<TcpStream>> {
        (0..count)
            .map(|i| {
                TcpStream::connect(self.addr)
                    .with_context(|| format!("connection {i} to {}", self.addr))
            })
            .collect()
    }

    /// Accepts everything queued and returns how many connections each listener had.
    pub fn drain(&self) -> Result<Vec<usize>> {
        self.listeners.iter().map(|l| drain_one(l).context("accepting")).collect()
    }

    /// Index of the single listener that has a queued connection (accepting it).
    pub fn which(&self) -> Result<usize> {
        let counts = self.drain()?;
        let hit: Vec<usize> =
            counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, _)| i).collect();
        anyhow::ensure!(
            hit.len() == 1 && counts[hit[0]] == 1,
            "expected one queued connection, found {counts:?}"
        );
        Ok(hit[0])
    }
}

fn drain_one(l: &TcpListener) -> io::Result<usize> {
    let mut n = 0;
    loop {
        match l.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

/// Pins the calling thread to CPU 0, so per-CPU state (round-robin position) is one sequence.
pub fn pin_to_cpu0() -> Result<()> {
    let mut set = CpuSet::new();
    set.set(0);
    // None: the calling thread.
    sched_setaffinity(None, &set).context("sched_setaffinity")
}
