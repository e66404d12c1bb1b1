//! The eBPF object, embedded at build time, and the choice of program.
use aya::{programs::SkReuseport, Ebpf, EbpfLoader};
use balancer_common::programs;

use crate::error::{Error, Result};

/// The object built from `balancer-ebpf` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-ebpf"));

/// Which program a group runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `sk_reuseport`: selects a socket for new connections only.
    Select,
    /// `sk_reuseport/migrate` (Linux 5.14+): also places the queue of a closing listener.
    SelectOrMigrate,
}

impl Program {
    pub const fn name(self) -> &'static str {
        match self {
            Program::Select => programs::SELECT,
            Program::SelectOrMigrate => programs::SELECT_OR_MIGRATE,
        }
    }
}

/// Loads the object's maps and the given program into the kernel. The attach type (select, or
/// select-or-migrate) comes from the program's ELF section.
pub fn load(program: Program) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    // A deliberately broken build (`cargo xtask prove` only) tells the programs what to break.
    #[cfg(feature = "broken")]
    let id = crate::broken::broken().map_or(0u32, |b| b as u32);
    #[cfg(feature = "broken")]
    loader.override_global(balancer_common::broken::GLOBAL_BROKEN, &id, true);
    let mut ebpf = loader.load(OBJECT)?;
    let prog: &mut SkReuseport = ebpf
        .program_mut(program.name())
        .ok_or(Error::Program {
            name: program.name(),
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| Error::Program { name: program.name(), source })?;
    prog.load().map_err(|source| Error::Program { name: program.name(), source })?;
    Ok(ebpf)
}
