//! Configuration, read once from the environment in the constructor (before any other thread can
//! exist) and read-only afterwards: the balanced addresses (`REUSELB_LISTEN`), the controller's
//! socket (`REUSELB_SOCKET`), the weight asked for (`REUSELB_WEIGHT`), and for a pod, the template
//! asked for (`REUSELB_TEMPLATE`) and the pod's label (`REUSELB_POD`), both sent as they are in
//! every registration (a value that is not a protocol `Name` is logged and left out).

use core::{cell::UnsafeCell, ffi::c_char, net::SocketAddr};

use balancer_common::{
    broken::{self, Broken},
    protocol::{self, Name, Register, POD_LEN, TEMPLATE_LEN},
};

use crate::log::shim_log;

/// Most balanced addresses one process handles.
pub(crate) const MAX_ADDRS: usize = 16;

pub(crate) struct Config {
    pub addrs: [Option<SocketAddr>; MAX_ADDRS],
    pub n_addrs: usize,
    pub socket_path: [u8; 108],
    pub socket_path_len: usize,
    pub weight: u32,
    pub template: Name<TEMPLATE_LEN>,
    pub pod: Name<POD_LEN>,
    /// The part a deliberately broken build breaks (`REUSELB_BROKEN`, read only with the cargo
    /// feature `broken`, which only `cargo xtask prove` turns on).
    pub broken: Option<Broken>,
}

struct ConfigCell(UnsafeCell<Config>);
// SAFETY: written only by the constructor, before the program's own code runs; read-only after.
unsafe impl Sync for ConfigCell {}

static CONFIG: ConfigCell = ConfigCell(UnsafeCell::new(Config {
    addrs: [None; MAX_ADDRS],
    n_addrs: 0,
    socket_path: [0; 108],
    socket_path_len: 0,
    // 0: not asked (REUSELB_WEIGHT unset): the controller gives the service's default weight.
    weight: 0,
    template: Name::EMPTY,
    pod: Name::EMPTY,
    broken: None,
}));

/// The configuration (all empty before the constructor ran).
pub(crate) fn config() -> &'static Config {
    // SAFETY: see ConfigCell: nobody writes after the constructor.
    unsafe { &*CONFIG.0.get() }
}

/// Reads the environment into the configuration.
///
/// # Safety
/// Only from the constructor, while no other thread runs and nothing reads the configuration.
pub(crate) unsafe fn load() {
    // SAFETY: the caller guarantees exclusive access (see above).
    let cfg = unsafe { &mut *CONFIG.0.get() };
    if let Some(list) = env_str(protocol::ENV_LISTEN) {
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<SocketAddr>() {
                Ok(a) if cfg.n_addrs < MAX_ADDRS => {
                    cfg.addrs[cfg.n_addrs] = Some(a);
                    cfg.n_addrs += 1;
                }
                Ok(_) => shim_log!("more than {MAX_ADDRS} balanced addresses; ignoring {part}"),
                Err(_) => shim_log!("{}: not an ADDR:PORT: {part}", protocol::ENV_LISTEN),
            }
        }
    }
    let path = env_str(protocol::ENV_SOCKET)
        .filter(|p| !p.is_empty())
        .unwrap_or(protocol::DEFAULT_SOCKET_PATH);
    if path.len() < cfg.socket_path.len() {
        cfg.socket_path[..path.len()].copy_from_slice(path.as_bytes());
        cfg.socket_path_len = path.len();
    } else {
        shim_log!("{}: path too long for a unix socket", protocol::ENV_SOCKET);
    }
    if let Some(t) = env_str(protocol::ENV_TEMPLATE).map(str::trim).filter(|t| !t.is_empty()) {
        match Name::new(t) {
            Some(n) => cfg.template = n,
            None => shim_log!("{}: not a template name: {t}", protocol::ENV_TEMPLATE),
        }
    }
    if let Some(p) = env_str(protocol::ENV_POD).map(str::trim).filter(|p| !p.is_empty()) {
        match Name::new(p) {
            Some(n) => cfg.pod = n,
            None => shim_log!("{}: not a label (letters, digits, .-_/:): {p}", protocol::ENV_POD),
        }
    }
    if let Some(w) = env_str("REUSELB_WEIGHT").and_then(|w| w.trim().parse::<u32>().ok()) {
        cfg.weight = w.max(1);
    }
    if cfg!(feature = "broken") {
        if let Some(name) = env_str(broken::ENV_BROKEN) {
            cfg.broken = Broken::from_name(name);
            match cfg.broken {
                Some(_) => shim_log!("deliberately broken build: {name} ({})", broken::ENV_BROKEN),
                None => {
                    shim_log!("{}={name}: no such broken build: nothing broken", broken::ENV_BROKEN)
                }
            }
        }
    }
}

/// Whether this build was asked to break `kind` (never without the feature `broken`).
#[inline(always)]
pub(crate) fn is_broken(kind: Broken) -> bool {
    cfg!(feature = "broken") && config().broken == Some(kind)
}

fn env_str(name: &str) -> Option<&'static str> {
    let mut buf = [0u8; 64];
    let n = name.len().min(63);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: NUL-terminated name; getenv's result lives as long as the environment entry, which
    // nobody changes during the constructor; we only keep it for parsing there (and the path is
    // copied).
    let p = unsafe { libc::getenv(buf.as_ptr() as *const c_char) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string (see above for its lifetime).
    let s = unsafe { core::ffi::CStr::from_ptr(p) };
    s.to_str().ok()
}

/// The registration message of process `pid`: the weight, template and pod label configured.
pub(crate) fn register_message(pid: u32) -> Register {
    let cfg = config();
    let mut msg = Register::new(pid, cfg.weight);
    msg.template = cfg.template;
    msg.pod = cfg.pod;
    msg
}

/// Index of `addr` among the balanced addresses.
pub(crate) fn addr_index(addr: &SocketAddr) -> Option<usize> {
    let cfg = config();
    let same = |a: &SocketAddr| a.port() == addr.port() && a.ip() == addr.ip();
    cfg.addrs[..cfg.n_addrs].iter().position(|a| a.as_ref().is_some_and(same))
}
