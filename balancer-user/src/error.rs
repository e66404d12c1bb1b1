//! Errors of the library. Each names the operation and the object it failed on.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program `{name}`: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("eBPF map `{name}`: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("eBPF map `{0}` is missing from the object")]
    MissingMap(&'static str),
    #[error("mmap of the load map failed: {0}")]
    Mmap(io::Error),
    #[error("slot {0} is out of range (0..{max})", max = balancer_common::MAX_SLOTS)]
    SlotOutOfRange(u32),
    #[error("slot {0} is already taken")]
    SlotTaken(u32),
    #[error("slot {0} is free")]
    SlotFree(u32),
    #[error("slot {slot} belongs to another socket or process (owner pid {owner}): refused to pid {pid}")]
    NotOwner { slot: u32, pid: u32, owner: u32 },
    #[error("all {} slots are taken", balancer_common::MAX_SLOTS)]
    NoFreeSlot,
    #[error("pinning at {}: {source}", path.display())]
    Pin { path: std::path::PathBuf, source: io::Error },
    #[error("socket operation `{op}` failed: {source}")]
    Socket { op: &'static str, source: io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
