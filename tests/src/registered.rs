//! Apps registered with an in-process controller: a [`Registry`] (the library's, no `reuselb`
//! process) serving one address with a least-loaded [`Group`], and uWSGI started with the shim
//! under it, waited for until every worker holds a slot.
//!
//! Loading the program needs root and BPF: these helpers panic with the reason, never skip.
use std::{net::SocketAddr, path::Path, time::Duration};

use balancer_common::Policy;
use balancer_user::{
    registry::{Registry, RegistryOptions, Service},
    Group, GroupOptions, Mode,
};

use crate::apps::{wait_until, Proc, UwsgiConfig};

/// A least-loaded group running `mode`. Panics if the program cannot be loaded.
pub fn least_loaded_group(mode: Mode) -> Group {
    Group::new(GroupOptions { policy: Policy::LeastLoaded, mode, ..Default::default() })
        .unwrap_or_else(|e| {
            panic!("cannot load the SK_REUSEPORT program (these tests need root and BPF): {e}")
        })
}

/// A registry on `socket` serving `addr` with a least-loaded group (`Mode::Auto`).
pub fn start_registry(socket: &Path, addr: SocketAddr) -> Registry {
    Registry::start(RegistryOptions::new(socket), vec![(addr, least_loaded_group(Mode::Auto))])
        .expect("start the registry")
}

/// The pids in the service's slots, in slot order. Panics if the slots cannot be read.
pub fn slot_pids(service: &Service) -> Vec<u32> {
    service.group().slots().expect("read slots").iter().map(|s| s.pid).collect()
}

/// Starts uWSGI (`cfg`) with the shim registering at `registry`'s socket, its output in `log`,
/// and waits until every worker is up and holds a slot of `cfg.addr`'s service. Panics with the
/// log's tail otherwise.
pub fn uwsgi_under(registry: &Registry, cfg: &UwsgiConfig, log: &Path) -> Proc {
    let service = registry
        .service(cfg.addr)
        .unwrap_or_else(|| panic!("the registry does not serve {}", cfg.addr));
    let app = cfg.start_with_shim(registry.socket_path(), log);
    assert!(
        wait_until(Duration::from_secs(20), || slot_pids(service).len() == cfg.processes as usize),
        "not every worker registered ({:?}): {}",
        slot_pids(service),
        app.log_tail(60)
    );
    app
}
