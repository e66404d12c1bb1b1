//! One balanced group: the listening sockets of one service address, the program that picks
//! among them, and the maps they share.
//!
//! Who owns a slot is recorded twice: in the shared load table (`SlotRecord::pid` and `epoch`,
//! which the shims read and which every worker of the service can write) and in the `OWNERS`
//! map, which only the controller writes and which is never handed to a worker. `OWNERS` is the
//! truth: slot views, adoption and [`Group::reuse`] read it, and the table's copy is rewritten
//! from it whenever a slot is given (back) to its owner. A slot is recognised by the SO_COOKIE
//! of its worker's listening socket (set by the kernel) and its pid (SO_PEERCRED).
use std::{
    fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, ReusePortSockArray},
    programs::{ProgramInfo, SkReuseport, SkReuseportAttachType},
    Ebpf,
};
use balancer_common::{
    config_flags, maps, protocol::LAYOUT_VERSION, Config, Event, Policy, SlotOwner, MAX_SLOTS,
};

use crate::{
    ebpf_log::LogForwarder,
    error::{Error, Result},
    loader::{self, Program},
    shared_loads::SharedLoads,
};

/// `Config::blocked_after_ms` for a limit: at least 1 ms when on, 0 when off.
fn blocked_after_ms(limit: Option<std::time::Duration>) -> u32 {
    limit.map_or(0, |d| d.as_millis().clamp(1, u32::MAX.into()) as u32)
}

/// Which program to run: defined with the config file that names it.
pub use balancer_config::Mode;

#[derive(Clone, Debug, Default)]
pub struct GroupOptions {
    pub policy: Policy,
    pub mode: Mode,
    /// Log every selection (costly: debugging only).
    pub log_selections: bool,
    /// Pass over a worker with connections in flight that has made no progress for this long
    /// (see `Config::blocked_after_ms`); `None` (the default) turns the check off.
    pub blocked_after: Option<std::time::Duration>,
    /// The pack policy's depth (see `Config::pack_depth`; 0 counts as 1).
    pub pack_depth: u32,
    /// A bpffs directory for this group's program and maps. If it holds a pinned group, that group
    /// is adopted (a controller restarting after a crash); if not, the new one is pinned there.
    pub pin_dir: Option<PathBuf>,
}

/// One occupied slot, as read from the maps. `pid`, `epoch` and `cookie` are the controller's
/// record (`OWNERS`), never what a worker wrote into the shared table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    pub slot: u32,
    pub pid: u32,
    pub weight: u32,
    pub epoch: u64,
    /// SO_COOKIE of the owner's listening socket.
    pub cookie: u64,
    /// Requests in flight: queued, or accepted and not yet answered.
    pub inflight: u64,
    pub accepted: u64,
    /// Requests answered (see `SlotRecord::completed`).
    pub completed: u64,
    /// Sum of their times from accept to answer, in microseconds.
    pub answer_us: u64,
    /// Requests accepted and not answered yet (clamped at 0).
    pub working: u64,
    /// When the worker last answered (CLOCK_MONOTONIC microseconds; 0 if it has not yet).
    pub answered_at_us: u64,
    /// The worker's recent response time as its shim last set it (at `answered_at_us`), in
    /// microseconds, raw: speed-aware decays it toward the group's mean (see
    /// `balancer_common::policy::recent_now`). Written by the worker: untrusted.
    pub recent_us: u64,
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

/// Where the group's program lives: in an object this process loaded, or pinned by an earlier one.
enum Source {
    Loaded(Ebpf),
    Adopted(Box<SkReuseport>),
}

/// The maps the controller uses; the program keeps the others (round-robin ticks, logs) alive.
const PINNED_MAPS: [&str; 6] =
    [maps::SOCKETS, maps::LOADS, maps::CONFIG, maps::SELECTED, maps::EVENTS, maps::OWNERS];

pub struct Group {
    source: Source,
    program: Program,
    pin_dir: Option<PathBuf>,
    adopted: bool,
    sockets: ReusePortSockArray<MapData>,
    config_map: Array<MapData, Config>,
    selected: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    owners_map: Array<MapData, SlotOwner>,
    /// What `owners_map` holds (this process is its only writer): read without a system call.
    owners: Vec<SlotOwner>,
    loads_map: MapData,
    loads: Arc<SharedLoads>,
    config: Config,
    occupied: [bool; MAX_SLOTS as usize],
    _log: Option<LogForwarder>,
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(Error::MissingMap(name))
}

/// Which program is pinned in `dir`, if a complete group is.
fn pinned_program(dir: &Path) -> Option<Program> {
    let complete = PINNED_MAPS.iter().all(|m| dir.join(m).exists());
    [Program::SelectOrMigrate, Program::Select]
        .into_iter()
        .find(|p| complete && dir.join(p.name()).exists())
}

/// Where the pins of this controller's load-table layout live under a group's pin directory.
pub fn layout_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("layout-{LAYOUT_VERSION}"))
}

/// Removes whatever `pin_dir` holds besides this layout's directory: pins of another layout, or
/// of a controller from before layouts were named (pinned at the top). Their program stays
/// attached to the workers' sockets until a worker registers with the new group.
fn clear_other_layouts(pin_dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(pin_dir) else { return Ok(()) };
    let mine = layout_dir(pin_dir);
    for entry in entries.flatten() {
        let path = entry.path();
        if path == mine {
            continue;
        }
        log::warn!(
            "{}: pinned by a controller of another load-table layout (this one has layout \
             {LAYOUT_VERSION}): removed, not adopted; the workers register again",
            path.display()
        );
        let removed =
            if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(|source| Error::Pin { path: path.clone(), source })?;
    }
    Ok(())
}

/// Pins the program and the controller's maps under `dir` (created if missing).
fn pin_all(ebpf: &mut Ebpf, program: Program, dir: &Path) -> Result<()> {
    let pin_err = |path: PathBuf| {
        move |e: aya::pin::PinError| Error::Pin { path, source: std::io::Error::other(e) }
    };
    fs::create_dir_all(dir).map_err(|source| Error::Pin { path: dir.to_owned(), source })?;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        ebpf.map(name).ok_or(Error::MissingMap(name))?.pin(&path).map_err(pin_err(path))?;
    }
    let path = dir.join(program.name());
    let prog: &mut SkReuseport = ebpf
        .program_mut(program.name())
        .and_then(|p| p.try_into().ok())
        .expect("the loaded program is in the object");
    prog.pin(&path).map_err(pin_err(path))
}

/// SO_COOKIE of a socket handed to the group.
fn socket_cookie(socket: &impl AsFd) -> Result<u64> {
    crate::sys::socket_cookie(socket.as_fd())
        .map_err(|e| Error::Socket { op: e.call, source: e.source })
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

impl Group {
    /// Loads the program and creates the group's maps (nothing attached yet), or adopts the group
    /// pinned in `options.pin_dir`.
    ///
    /// Pins live in `<pin_dir>/layout-<LAYOUT_VERSION>`: a group pinned by a controller of
    /// another load-table layout (or by one from before layouts were named) is never adopted.
    /// Its pins are removed and a new group is made; the workers register again with it.
    pub fn new(options: GroupOptions) -> Result<Self> {
        let pins = options.pin_dir.as_deref().map(layout_dir);
        if let Some(top) = &options.pin_dir {
            clear_other_layouts(top)?;
        }
        if let Some(dir) = &pins {
            if let Some(program) = pinned_program(dir) {
                return Self::adopt(dir, program, &options);
            }
        }
        let (mut ebpf, program) = match options.mode {
            Mode::Select => (loader::load(Program::Select)?, Program::Select),
            Mode::SelectOrMigrate => {
                (loader::load(Program::SelectOrMigrate)?, Program::SelectOrMigrate)
            }
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
        if let Some(dir) = &pins {
            pin_all(&mut ebpf, program, dir)?;
        }
        let log = match LogForwarder::start(&mut ebpf) {
            Ok(f) => Some(f),
            Err(err) => {
                log::warn!("eBPF log forwarding unavailable: {err}");
                None
            }
        };
        let [sockets, loads, config, selected, events, owners] =
            PINNED_MAPS.map(|name| take_map(&mut ebpf, name));
        let mut group = Self::assemble(
            Source::Loaded(ebpf),
            program,
            [sockets?, loads?, config?, selected?, events?, owners?],
            log,
            &options,
            None,
        )?;
        group.config.flags = if options.log_selections { config_flags::LOG_SELECTIONS } else { 0 };
        group.write_config()?;
        Ok(group)
    }

    /// Takes over a group pinned by an earlier controller: the program, still attached, has kept
    /// balancing meanwhile. Slots and loads are as it left them; the registry matches workers
    /// that register again to their slots by the owner records (`OWNERS`: socket cookie and pid).
    fn adopt(dir: &Path, program: Program, options: &GroupOptions) -> Result<Self> {
        let attach_type = match program {
            Program::Select => SkReuseportAttachType::Select,
            Program::SelectOrMigrate => SkReuseportAttachType::SelectOrMigrate,
        };
        let prog = SkReuseport::from_pin(dir.join(program.name()), attach_type)
            .map_err(|source| Error::Program { name: program.name(), source })?;
        let log = prog
            .info()
            .ok()
            .and_then(|info| aya_log::EbpfLogger::init_from_id(info.id()).ok())
            .map(LogForwarder::from_logger);
        let maps = PINNED_MAPS.map(|name| {
            MapData::from_pin(dir.join(name)).and_then(Map::from_map_data).map_err(map_err(name))
        });
        let [sockets, loads, config, selected, events, owners] = maps;
        let config = config?;
        let pinned_config = Array::<&MapData, Config>::try_from(&config)
            .and_then(|a| a.get(&0, 0))
            .map_err(map_err(maps::CONFIG))?;
        let mut group = Self::assemble(
            Source::Adopted(Box::new(prog)),
            program,
            [sockets?, loads?, config, selected?, events?, owners?],
            log,
            options,
            Some(pinned_config),
        )?;
        group.config.policy = options.policy as u32;
        group.config.blocked_after_ms = blocked_after_ms(options.blocked_after);
        group.config.pack_depth = options.pack_depth;
        group.write_config()?;
        log::info!(
            "adopted the group pinned at {} ({} workers)",
            dir.display(),
            group.occupied_slots().count()
        );
        Ok(group)
    }

    fn assemble(
        source: Source,
        program: Program,
        [sockets, loads, config, selected, events, owners]: [Map; 6],
        log: Option<LogForwarder>,
        options: &GroupOptions,
        pinned_config: Option<Config>,
    ) -> Result<Self> {
        let sockets = ReusePortSockArray::try_from(sockets).map_err(map_err(maps::SOCKETS))?;
        let config_map = Array::try_from(config).map_err(map_err(maps::CONFIG))?;
        let selected = PerCpuArray::try_from(selected).map_err(map_err(maps::SELECTED))?;
        let events = PerCpuArray::try_from(events).map_err(map_err(maps::EVENTS))?;
        let owners_map: Array<MapData, SlotOwner> =
            Array::try_from(owners).map_err(map_err(maps::OWNERS))?;
        let owners = (0..MAX_SLOTS)
            .map(|slot| owners_map.get(&slot, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::OWNERS))?;
        let loads_map = match loads {
            Map::Array(data) => data,
            _ => return Err(Error::MissingMap(maps::LOADS)),
        };
        let loads = Arc::new(SharedLoads::map(loads_map.fd().as_fd())?);
        let mut occupied = [false; MAX_SLOTS as usize];
        if let Some(cfg) = &pinned_config {
            for &slot in cfg.active_slots() {
                if slot < MAX_SLOTS {
                    occupied[slot as usize] = true;
                }
            }
        }
        Ok(Self {
            source,
            program,
            pin_dir: options.pin_dir.clone(),
            adopted: pinned_config.is_some(),
            sockets,
            config_map,
            selected,
            events,
            owners_map,
            owners,
            loads_map,
            loads,
            config: pinned_config.unwrap_or(Config {
                blocked_after_ms: blocked_after_ms(options.blocked_after),
                pack_depth: options.pack_depth,
                ..Config::empty(options.policy as u32)
            }),
            occupied,
            _log: log,
        })
    }

    /// True if this group was adopted from pins rather than created.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Removes the group's pins: once its sockets close, the kernel frees the program and maps.
    pub fn unpin(&self) -> Result<()> {
        let Some(dir) = &self.pin_dir else { return Ok(()) };
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Pin { path: dir.clone(), source }),
        }
    }

    fn prog(&self) -> &SkReuseport {
        match &self.source {
            Source::Loaded(ebpf) => ebpf
                .program(self.program.name())
                .and_then(|p| <&SkReuseport>::try_from(p).ok())
                .expect("the loaded program is in the object"),
            Source::Adopted(prog) => prog,
        }
    }

    /// Which program runs (select-only, or select-or-migrate).
    pub fn program(&self) -> Program {
        self.program
    }

    /// Attaches the program to the reuseport group `socket` belongs to.
    pub fn attach(&self, socket: impl AsFd) -> Result<()> {
        self.prog()
            .attach(socket)
            .map_err(|source| Error::Program { name: self.program.name(), source })
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
    pub fn insert(
        &mut self,
        socket: &(impl AsFd + AsRawFd),
        pid: u32,
        weight: u32,
    ) -> Result<(u32, u64)> {
        let slot = self.occupied.iter().position(|o| !o).ok_or(Error::NoFreeSlot)? as u32;
        let epoch = self.insert_at(slot, socket, pid, weight)?;
        Ok((slot, epoch))
    }

    /// Puts a listening socket into `slot`. The socket must be listening, with SO_REUSEPORT, in
    /// the same reuseport group as the others. `pid` is the owner's, as the kernel says
    /// (SO_PEERCRED). Returns the slot's new epoch.
    pub fn insert_at(
        &mut self,
        slot: u32,
        socket: &(impl AsFd + AsRawFd),
        pid: u32,
        weight: u32,
    ) -> Result<u64> {
        let index = self.check_slot(slot)?;
        if self.occupied[index] {
            return Err(Error::SlotTaken(slot));
        }
        let cookie = socket_cookie(socket)?;
        // Record the owner and reset the shared record before the socket can be chosen, then
        // publish it: an occupied slot always has its owner record (a controller that dies in
        // between leaves a record for a slot that is not occupied: overwritten when it is used).
        let epoch = self.owners[index].epoch.wrapping_add(1);
        self.set_owner(slot, SlotOwner { cookie, epoch, pid, _reserved: 0 })?;
        self.loads.reset(slot, pid, weight, epoch);
        self.sockets.set(slot, socket, 0).map_err(map_err(maps::SOCKETS))?;
        self.occupied[index] = true;
        self.publish_active()?;
        Ok(epoch)
    }

    /// Gives an occupied `slot` back to its owner registering again (after a controller restart
    /// adopted the group): only if `socket` is the very socket recorded for the slot (its
    /// SO_COOKIE) and `pid` the recorded owner's. The counters and epoch are kept, the shared
    /// table's pid and epoch are rewritten from the owner record, and the socket array entry is
    /// set to `socket` if it does not hold it already. Returns the slot's (unchanged) epoch.
    pub fn reuse(
        &mut self,
        slot: u32,
        socket: &(impl AsFd + AsRawFd),
        pid: u32,
        weight: u32,
    ) -> Result<u64> {
        let index = self.check_slot(slot)?;
        if !self.occupied[index] {
            return Err(Error::SlotFree(slot));
        }
        let owner = self.owners[index];
        let cookie = socket_cookie(socket)?;
        if owner.cookie != cookie || owner.pid != pid {
            return Err(Error::NotOwner { slot, pid, owner: owner.pid });
        }
        match self.sockets.set(slot, socket, 0) {
            Ok(()) => {}
            // The socket is in the array already (the kernel refuses a socket twice).
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(map_err(maps::SOCKETS)(e)),
        }
        self.loads.set_owner(slot, owner.pid, owner.epoch);
        self.loads.set_weight(slot, weight);
        Ok(owner.epoch)
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
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_err(maps::SOCKETS)(e)),
        }
        // The epoch stays: the next owner's is one more.
        let epoch = self.owners[index].epoch;
        self.set_owner(slot, SlotOwner { epoch, ..SlotOwner::default() })
    }

    /// Records `owner` for `slot` in `OWNERS` (and in this process's copy).
    fn set_owner(&mut self, slot: u32, owner: SlotOwner) -> Result<()> {
        self.owners_map.set(slot, owner, 0).map_err(map_err(maps::OWNERS))?;
        self.owners[slot as usize] = owner;
        Ok(())
    }

    /// The controller's record of `slot`'s owner (cookie 0 and pid 0 if the slot is free).
    pub fn owner(&self, slot: u32) -> Result<SlotOwner> {
        Ok(self.owners[self.check_slot(slot)?])
    }

    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        self.config.policy = policy as u32;
        self.write_config()
    }

    pub fn policy(&self) -> Policy {
        Policy::from_id(self.config.policy).unwrap_or_default()
    }

    /// Sets (or with `None`, turns off) the blocked check, live.
    pub fn set_blocked_after(&mut self, limit: Option<std::time::Duration>) -> Result<()> {
        self.config.blocked_after_ms = blocked_after_ms(limit);
        self.write_config()
    }

    /// The blocked check's limit, `None` when it is off.
    pub fn blocked_after(&self) -> Option<std::time::Duration> {
        match self.config.blocked_after_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms.into())),
        }
    }

    /// Sets the pack policy's depth, live (0 counts as 1).
    pub fn set_pack_depth(&mut self, depth: u32) -> Result<()> {
        self.config.pack_depth = depth;
        self.write_config()
    }

    /// The pack policy's depth as the program applies it (0 reads as 1).
    pub fn pack_depth(&self) -> u32 {
        self.config.pack_depth.max(1)
    }

    pub fn set_log_selections(&mut self, on: bool) -> Result<()> {
        self.config.flags = if on {
            self.config.flags | config_flags::LOG_SELECTIONS
        } else {
            self.config.flags & !config_flags::LOG_SELECTIONS
        };
        self.write_config()
    }

    pub fn set_weight(&mut self, slot: u32, weight: u32) -> Result<()> {
        self.check_slot(slot)?;
        self.loads.set_weight(slot, weight);
        // The fast path's `uniform_weight` follows the weights.
        self.publish_active()
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

    /// The kernel id of the load map (0 if the kernel does not say), for the shim to check the
    /// map it is handed (`Reply::map_id`).
    pub fn loads_map_id(&self) -> u32 {
        self.loads_map.info().map(|i| i.id()).unwrap_or(0)
    }

    /// The occupied slots with their loads and counters, in slot order.
    pub fn slots(&self) -> Result<Vec<SlotView>> {
        let mut out = Vec::new();
        for slot in self.occupied_slots() {
            let rec = self.loads.read(slot);
            let owner = self.owners[slot as usize];
            out.push(SlotView {
                slot,
                pid: owner.pid,
                weight: rec.weight,
                epoch: owner.epoch,
                cookie: owner.cookie,
                inflight: rec.inflight,
                accepted: rec.accepted,
                completed: rec.completed,
                answer_us: rec.answer_us,
                working: rec.working.max(0) as u64,
                // The shim sets the recent time's stamp at every answer, and only then.
                answered_at_us: rec.recent_at_us,
                recent_us: rec.recent_us,
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

    /// Writes the active slots into the config record, with the fast path's hints: the active
    /// mask, and the weight they all share (read from the table, where the controller wrote
    /// them; 0 if they differ).
    fn publish_active(&mut self) -> Result<()> {
        let slots: Vec<u32> = self.occupied_slots().collect();
        let mut weights = slots.iter().map(|&s| self.loads.read(s).weight.max(1));
        let first = weights.next().unwrap_or(1);
        let uniform = if weights.all(|w| w == first) { first } else { 0 };
        self.config.set_active(&slots, uniform);
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        self.config.generation = self.config.generation.wrapping_add(1);
        self.config_map.set(0, self.config, 0).map_err(map_err(maps::CONFIG))
    }
}
