//! One balanced group: the listening sockets of one service address, the program that picks
//! among them, and the maps they share.
use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::Arc,
};

use aya::{
    maps::{Array, MapData, PerCpuArray, ReusePortSockArray},
    programs::{ProgramInfo, SkReuseport},
    Ebpf,
};
use balancer_common::{config_flags, maps, Config, Event, Policy, MAX_SLOTS};

use crate::{
    ebpf_log::LogForwarder,
    error::{Error, Result},
    loader::{self, Program},
    shared_loads::SharedLoads,
};

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// select-or-migrate where the kernel supports it (5.14+), select-only otherwise.
    #[default]
    Auto,
    Select,
    SelectOrMigrate,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GroupOptions {
    pub policy: Policy,
    pub mode: Mode,
    /// Log every selection (costly: debugging only).
    pub log_selections: bool,
}

/// One occupied slot, as read from the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    pub slot: u32,
    pub pid: u32,
    pub weight: u32,
    pub epoch: u64,
    /// Connections assigned and not yet completed.
    pub inflight: u64,
    pub assigned: u64,
    pub accepted: u64,
    pub completed: u64,
    /// Selections of this slot since the group was created (survives slot reuse).
    pub selected_total: u64,
}

/// Group-wide counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// One counter per [`Event`], indexed by its id.
    pub events: [u64; Event::COUNT as usize],
}

impl Stats {
    pub fn get(&self, event: Event) -> u64 {
        self.events[event as usize]
    }

    pub fn fallbacks(&self) -> u64 {
        Event::ALL.iter().filter(|e| e.is_fallback()).map(|&e| self.get(e)).sum()
    }
}

pub struct Group {
    ebpf: Ebpf,
    program: Program,
    sockets: ReusePortSockArray<MapData>,
    config_map: Array<MapData, Config>,
    selected: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    loads_map: MapData,
    loads: Arc<SharedLoads>,
    config: Config,
    occupied: [bool; MAX_SLOTS as usize],
    _log: Option<LogForwarder>,
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(Error::MissingMap(name))
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

impl Group {
    /// Loads the programs and creates the group's maps. Nothing is attached yet.
    pub fn new(options: GroupOptions) -> Result<Self> {
        let (mut ebpf, program) = match options.mode {
            Mode::Select => (loader::load(Program::Select)?, Program::Select),
            Mode::SelectOrMigrate => (loader::load(Program::SelectOrMigrate)?, Program::SelectOrMigrate),
            Mode::Auto => match loader::load(Program::SelectOrMigrate) {
                Ok(ebpf) => (ebpf, Program::SelectOrMigrate),
                Err(err) => {
                    log::warn!(
                        "select-or-migrate program not accepted ({err}); running select-only: \
                         a worker that exits will reset the connections queued on its socket"
                    );
                    (loader::load(Program::Select)?, Program::Select)
                }
            },
        };
        let log = match LogForwarder::start(&mut ebpf) {
            Ok(f) => Some(f),
            Err(err) => {
                log::warn!("eBPF log forwarding unavailable: {err}");
                None
            }
        };
        let sockets = ReusePortSockArray::try_from(take_map(&mut ebpf, maps::SOCKETS)?).map_err(map_err(maps::SOCKETS))?;
        let config_map = Array::try_from(take_map(&mut ebpf, maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        let selected = PerCpuArray::try_from(take_map(&mut ebpf, maps::SELECTED)?).map_err(map_err(maps::SELECTED))?;
        let events = PerCpuArray::try_from(take_map(&mut ebpf, maps::EVENTS)?).map_err(map_err(maps::EVENTS))?;
        let loads_map = match take_map(&mut ebpf, maps::LOADS)? {
            aya::maps::Map::Array(data) => data,
            _ => return Err(Error::MissingMap(maps::LOADS)),
        };
        let loads = Arc::new(SharedLoads::map(loads_map.fd().as_fd())?);
        let mut group = Self {
            ebpf,
            program,
            sockets,
            config_map,
            selected,
            events,
            loads_map,
            loads,
            config: Config::empty(options.policy as u32),
            occupied: [false; MAX_SLOTS as usize],
            _log: log,
        };
        group.config.flags = if options.log_selections { config_flags::LOG_SELECTIONS } else { 0 };
        group.write_config()?;
        Ok(group)
    }

    fn prog(&self) -> &SkReuseport {
        self.ebpf
            .program(self.program.name())
            .and_then(|p| <&SkReuseport>::try_from(p).ok())
            .expect("the loaded program is in the object")
    }

    /// Which program runs (select-only, or select-or-migrate).
    pub fn program(&self) -> Program {
        self.program
    }

    /// Attaches the program to the reuseport group `socket` belongs to.
    pub fn attach(&self, socket: impl AsFd) -> Result<()> {
        self.prog().attach(socket).map_err(|source| Error::Program { name: self.program.name(), source })
    }

    /// Detaches whatever program runs on `socket`'s reuseport group: the kernel's hash decides again.
    pub fn detach(socket: impl AsFd) -> Result<()> {
        SkReuseport::detach(socket).map_err(|source| Error::Program { name: "detach", source })
    }

    /// Kernel figures of the running program (run time and count, when BPF stats are enabled).
    pub fn program_info(&self) -> Result<ProgramInfo> {
        self.prog().info().map_err(|source| Error::Program { name: self.program.name(), source })
    }

    /// Puts a listening socket into the first free slot; returns the slot and its new epoch.
    pub fn insert(&mut self, socket: &impl AsRawFd, pid: u32, weight: u32) -> Result<(u32, u64)> {
        let slot = self.occupied.iter().position(|o| !o).ok_or(Error::NoFreeSlot)? as u32;
        let epoch = self.insert_at(slot, socket, pid, weight)?;
        Ok((slot, epoch))
    }

    /// Puts a listening socket into `slot`. The socket must be listening, with SO_REUSEPORT, in
    /// the same reuseport group as the others. Returns the slot's new epoch.
    pub fn insert_at(&mut self, slot: u32, socket: &impl AsRawFd, pid: u32, weight: u32) -> Result<u64> {
        let index = self.check_slot(slot)?;
        if self.occupied[index] {
            return Err(Error::SlotTaken(slot));
        }
        // Reset the record before the socket can be chosen, then publish it.
        let epoch = self.loads.reset(slot, pid, weight);
        self.sockets.set(slot, socket, 0).map_err(map_err(maps::SOCKETS))?;
        self.occupied[index] = true;
        self.publish_active()?;
        Ok(epoch)
    }

    /// Takes `slot` out of the selection and out of the socket array. The socket itself stays
    /// open (it is the caller's); its counters stay readable until the slot is reused.
    pub fn remove(&mut self, slot: u32) -> Result<()> {
        let index = self.check_slot(slot)?;
        if !self.occupied[index] {
            return Err(Error::SlotFree(slot));
        }
        self.occupied[index] = false;
        self.publish_active()?;
        match self.sockets.clear_index(&slot) {
            // The kernel already removed a socket that was closed.
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err(maps::SOCKETS)(e)),
        }
    }

    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        self.config.policy = policy as u32;
        self.write_config()
    }

    pub fn policy(&self) -> Policy {
        Policy::from_id(self.config.policy).unwrap_or_default()
    }

    pub fn set_log_selections(&mut self, on: bool) -> Result<()> {
        self.config.flags = if on { self.config.flags | config_flags::LOG_SELECTIONS } else { self.config.flags & !config_flags::LOG_SELECTIONS };
        self.write_config()
    }

    pub fn set_weight(&mut self, slot: u32, weight: u32) -> Result<()> {
        self.check_slot(slot)?;
        self.loads.set_weight(slot, weight);
        Ok(())
    }

    /// The shared load records. The mapping keeps the map alive, so the handle stays valid after
    /// the group is gone.
    pub fn loads(&self) -> &Arc<SharedLoads> {
        &self.loads
    }

    /// The load map's descriptor, to hand to a worker shim.
    pub fn loads_fd(&self) -> BorrowedFd<'_> {
        self.loads_map.fd().as_fd()
    }

    /// The occupied slots with their loads and counters, in slot order.
    pub fn slots(&self) -> Result<Vec<SlotView>> {
        let mut out = Vec::new();
        for slot in self.occupied_slots() {
            let rec = self.loads.read(slot);
            out.push(SlotView {
                slot,
                pid: rec.pid,
                weight: rec.weight,
                epoch: rec.epoch,
                inflight: rec.inflight(),
                assigned: rec.assigned,
                accepted: rec.accepted,
                completed: rec.completed,
                selected_total: self.selected_total(slot)?,
            });
        }
        Ok(out)
    }

    /// Selections of `slot` since the group was created, summed over CPUs.
    pub fn selected_total(&self, slot: u32) -> Result<u64> {
        self.check_slot(slot)?;
        Ok(self.selected.get(&slot, 0).map_err(map_err(maps::SELECTED))?.iter().sum())
    }

    pub fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        for event in Event::ALL {
            let values = self.events.get(&(event as u32), 0).map_err(map_err(maps::EVENTS))?;
            stats.events[event as usize] = values.iter().sum();
        }
        Ok(stats)
    }

    pub fn occupied_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.occupied.iter().enumerate().filter(|(_, o)| **o).map(|(i, _)| i as u32)
    }

    fn check_slot(&self, slot: u32) -> Result<usize> {
        if slot < MAX_SLOTS {
            Ok(slot as usize)
        } else {
            Err(Error::SlotOutOfRange(slot))
        }
    }

    fn publish_active(&mut self) -> Result<()> {
        let mut n = 0;
        for slot in self.occupied.iter().enumerate().filter(|(_, o)| **o).map(|(i, _)| i as u32) {
            self.config.active[n] = slot;
            n += 1;
        }
        self.config.n_active = n as u32;
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        self.config.generation = self.config.generation.wrapping_add(1);
        self.config_map.set(0, self.config, 0).map_err(map_err(maps::CONFIG))
    }
}
