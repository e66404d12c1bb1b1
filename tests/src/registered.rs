//! Apps registered with an in-process controller: a [`Registry`] (the library's, no `reuselb`
//! process) serving one address with a least-loaded [`Group`], and uWSGI started with the shim
//! under it, waited for until every worker holds a slot.
//!
//! The load-awareness scene any registered app can be put through: two workers blocked by a long
//! GIL-holding request, short requests counted by the worker that answered them
//! ([`blocked_scene`]).
//!
//! Loading the program needs root and BPF: these helpers panic with the reason, never skip.
use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use balancer_common::{layout::MAX_SLOTS, Policy};
use balancer_user::{
    registry::{Registry, RegistryOptions, Service},
    Group, GroupOptions, Mode,
};

use crate::{
    apps::{wait_until, Load, Proc, UwsgiConfig},
    blocked::{block_two, BlockedShare},
};

/// A least-loaded group running `mode`. Panics if the program cannot be loaded.
pub fn least_loaded_group(mode: Mode) -> Group {
    Group::new(GroupOptions { policy: Policy::LeastLoaded, mode, ..Default::default() })
        .unwrap_or_else(|e| {
            panic!("cannot load the SK_REUSEPORT program (these tests need root and BPF): {e}")
        })
}

/// A registry on `socket` serving `addr` with a least-loaded group (`Mode::Auto`).
pub fn start_registry(socket: &Path, addr: SocketAddr) -> Registry {
    start_registry_for(socket, &[addr])
}

/// A registry on `socket` serving each of `addrs` with a least-loaded group of its own.
pub fn start_registry_for(socket: &Path, addrs: &[SocketAddr]) -> Registry {
    let services = addrs.iter().map(|a| (*a, least_loaded_group(Mode::Auto))).collect();
    Registry::start(RegistryOptions::new(socket), services).expect("start the registry")
}

/// The program's selections for `service` since its group was created, over every slot (also
/// those of workers gone since).
pub fn total_selections(service: &Service) -> u64 {
    let group = service.group();
    (0..MAX_SLOTS).map(|slot| group.selected_total(slot).unwrap_or(0)).sum()
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

/// The load-awareness scene, under `service`'s current policy: with nothing in flight, sends long
/// GIL-holding requests (`block`) to `entry` until two distinct workers hold one (read from the
/// slots' in-flight counts: the program counts a connection from its selection), then `requests`
/// short requests, started evenly over `window` (an open loop, so a request stuck behind a block
/// does not stop the others, and every policy is judged on the same count; shortened to end inside
/// the block, [`crate::blocked::Blocked::window`]). Returns where those went; waits for the long
/// requests to end. Panics if two workers cannot be blocked, or blocking them left under a third
/// of `window` inside the block.
pub fn blocked_scene(
    service: &Service,
    entry: SocketAddr,
    block: Duration,
    window: Duration,
    requests: usize,
) -> BlockedShare {
    let busy = || -> HashSet<u32> {
        service
            .group()
            .slots()
            .map(|s| s.iter().filter(|v| v.inflight > 0).map(|v| v.pid).collect())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(15), || busy().is_empty()),
        "requests still in flight before the scene: {:?}",
        service.group().slots()
    );
    // One C call holding the GIL: no other thread of a blocked worker runs Python meanwhile.
    let request = format!("/?ms=0&hold={}", block.as_millis());
    let blocked = block_two(entry, &request, block, Duration::from_millis(300), busy);
    let window = blocked.window(window, Duration::from_millis(500));
    let share = blocked.share(&Load::paced(entry, requests, "/?ms=2", window));
    blocked.end();
    share
}

/// [`blocked_scene`] under least-loaded, then under the hash policy (the control: the same scene
/// must send the blocked workers their share there, or it blocked nothing); the service's
/// policy is what it was again afterwards.
pub fn blocked_scene_with_control(
    service: &Service,
    entry: SocketAddr,
    block: Duration,
    window: Duration,
    requests: usize,
) -> (BlockedShare, BlockedShare) {
    let mut shares = Vec::new();
    let was = service.group().policy();
    for policy in [Policy::LeastLoaded, Policy::Hash] {
        service.group().set_policy(policy).expect("set the policy");
        shares.push(blocked_scene(service, entry, block, window, requests));
    }
    service.group().set_policy(was).expect("set the policy back");
    (shares[0], shares[1])
}
