//! Tests of the README's claims that fail when the balancer does nothing, decides blindly or
//! counts wrong.
//!
//! docs/CLAIMS.md lists, per claim, the test and the deliberately broken build it must catch
//! (`balancer_common::broken`: programs that return SK_PASS, programs that ignore the load table,
//! a shim that counts nothing or never counts an answer, a controller that never reconciles or
//! never recomputes the idle bytes); `cargo xtask test` runs each listed test against its broken
//! build after the whole suite. Where the claim is about balancing, the same test measures the
//! hash policy on the same setup as its control, so a test that passes with both policies alike
//! cannot pass.
use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use balancer_common::{Event, Policy};
use balancer_user::{
    registry::{Registry, RegistryOptions, Service},
    Mode,
};
use integration_tests::{
    apps::{
        busy_workers, free_port, loopback, one_request, require, serial, wait_until, Load, Proc,
        TempDir, UwsgiConfig, UwsgiProto,
    },
    blocked::{block_two, BlockedShare},
    registered::{least_loaded_group, uwsgi_under},
    NetNs, Pool,
};

/// uWSGI with the shim, registered with an in-process registry (least-loaded) that reconciles
/// every `reconcile`.
fn start_uwsgi(dir: &TempDir, cfg: &UwsgiConfig, reconcile: Duration) -> (Registry, Proc) {
    let mut options = RegistryOptions::new(dir.path().join("shim.sock"));
    options.reconcile_interval = reconcile;
    let registry = Registry::start(options, vec![(cfg.addr, least_loaded_group(Mode::Auto))])
        .expect("registry");
    let app = uwsgi_under(&registry, cfg, &dir.path().join("uwsgi.log"));
    (registry, app)
}

/// How long a blocking request holds its worker (one thread per worker: the whole process).
const BLOCK_MS: u64 = 4500;
/// Short requests while two workers are blocked, started evenly over [`WINDOW`] (an open loop:
/// every policy is judged on as many).
const SHORT_REQUESTS: usize = 100;
/// How long the short requests run, at most: less if blocking two workers was slow, so that they
/// end a second before the block does.
const WINDOW: Duration = Duration::from_millis(2500);

/// Blocks two distinct workers with a long request each, then runs short requests for
/// [`WINDOW`] (less if the set-up was slow: the window ends inside the block); returns where the
/// short requests went (they are answered when the block ends, so every one is counted).
fn share_sent_to_blocked_workers(cfg: &UwsgiConfig) -> BlockedShare {
    let request = format!("/?ms={BLOCK_MS}");
    let busy = || busy_workers(cfg.stats_port);
    let blocked = block_two(
        cfg.addr,
        &request,
        Duration::from_millis(BLOCK_MS),
        Duration::from_millis(500),
        busy,
    );
    let window = blocked.window(WINDOW, Duration::from_secs(1));
    let report = Load::paced(cfg.addr, SHORT_REQUESTS, "/?ms=2", window);
    if report.failed > 0 {
        println!(
            "{} short requests failed (counted as sent to a blocked worker): {:?}",
            report.failed, report.errors
        );
    }
    let share = blocked.share(&report);
    blocked.end();
    share
}

/// Load awareness (README: "a blocked worker is avoided") under `policy`: two of four
/// single-threaded uWSGI workers hold a long request; `policy` sends them almost none of the short
/// requests, while the hash policy on the same app (the control, same test) sends them about
/// half. Catches `sk-pass` (the kernel's hash decides under both policies) and `ignore-load`
/// (slots in turn, whatever the load).
fn avoids_blocked_workers_and_the_hash_policy_does_not(policy: Policy) {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("claims-blocked");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    cfg.processes = 4;
    cfg.threads = 1;
    let (registry, app) = start_uwsgi(&dir, &cfg, Duration::from_millis(250));
    let service = registry.service(cfg.addr).unwrap();
    let mut shares = Vec::new();
    for p in [policy, Policy::Hash] {
        service.group().set_policy(p).expect("set policy");
        // Nothing in flight from the previous round.
        assert!(
            wait_until(Duration::from_secs(15), || busy_workers(cfg.stats_port).is_empty()),
            "workers still busy: {}",
            app.log_tail(20)
        );
        let sent = share_sent_to_blocked_workers(&cfg);
        println!(
            "{p:?}: {} of {} short requests ({:.1}%) went to the 2 blocked workers of 4",
            sent.to_blocked,
            sent.total,
            sent.share() * 100.0
        );
        shares.push((sent.share(), sent.total));
    }
    let [(mine, total), (hash, hash_total)] = shares[..] else { unreachable!() };
    let n = SHORT_REQUESTS as u64;
    assert!(total == n && hash_total == n, "short requests sent: {total} and {hash_total} of {n}");
    assert!(
        mine <= 0.05,
        "{policy:?} sent {:.1}% of the short requests to the blocked workers",
        mine * 100.0
    );
    // The control: the same scene under the hash policy does send them their share.
    assert!(
        hash >= 0.25,
        "the hash policy sent only {:.1}% to the blocked workers: the scene blocked nothing",
        hash * 100.0
    );
    drop(app);
    registry.stop();
}

/// Least-loaded (named: the default is speed-aware) end to end, with its control.
#[test]
fn least_loaded_avoids_blocked_workers_and_the_hash_policy_does_not() {
    avoids_blocked_workers_and_the_hash_policy_does_not(Policy::LeastLoaded);
}

/// work-left end to end, with its control: a worker whose request has run long weighs more.
#[test]
fn work_left_avoids_blocked_workers_and_the_hash_policy_does_not() {
    avoids_blocked_workers_and_the_hash_policy_does_not(Policy::WorkLeft);
}

/// Counting (README: the shim counts each connection's accept and close, the program its
/// selection): with reconciliation off, the shim's accepted and completed counters grow by exactly
/// the requests served, and every slot's in-flight count is back to exactly 0 when idle. Catches
/// `no-count` (nothing accepted or completed) and `sk-pass` (the program adds
/// nothing, so the shim's closes drive in-flight below 0).
#[test]
fn shim_counters_equal_requests_served_with_reconciliation_off() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("claims-counting");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    cfg.processes = 4;
    cfg.threads = 4;
    // Reconciliation off: nothing corrects the counters behind the program's and the shim's back.
    let (registry, app) = start_uwsgi(&dir, &cfg, Duration::from_secs(3600));
    let service = registry.service(cfg.addr).unwrap();
    let totals = |service: &Service| -> (u64, u64) {
        let group = service.group();
        let slots = group.slots().expect("slots");
        let loads = group.loads();
        slots.iter().fold((0, 0), |(a, c), s| {
            let r = loads.read(s.slot);
            (a + r.accepted, c + r.completed)
        })
    };
    let (accepted0, completed0) = totals(service);
    let report = Load::run(cfg.addr, 8, "/?ms=1", Duration::from_secs(3));
    assert_eq!(report.failed, 0, "requests failed: {:?}", report.errors);
    assert!(report.ok >= 200, "too little traffic to mean anything: {}", report.ok);
    let raw_inflight = |service: &Service| -> Vec<i64> {
        let group = service.group();
        let slots = group.slots().expect("slots");
        slots.iter().map(|s| group.loads().read(s.slot).raw_inflight).collect()
    };
    let idle = wait_until(Duration::from_secs(5), || {
        let (_, completed) = totals(service);
        completed - completed0 >= report.ok && raw_inflight(service).iter().all(|&n| n == 0)
    });
    let (accepted, completed) = totals(service);
    println!(
        "{} requests served; shim: accepted {}, completed {}; in flight {:?}",
        report.ok,
        accepted - accepted0,
        completed - completed0,
        raw_inflight(service)
    );
    assert_eq!(accepted - accepted0, report.ok, "accepted != requests served");
    assert_eq!(completed - completed0, report.ok, "completed != requests served");
    assert!(idle, "in flight not back to exactly 0 when idle: {:?}", raw_inflight(service));
    assert_eq!(
        registry.counters().adjustments.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "reconciliation ran although it was off"
    );
    drop(app);
    registry.stop();
}

// ---------------------------------------------------------------------------------------------
// Stray packets (issue 11.6): only what becomes a connection is counted.

/// The Internet checksum of `data` added to `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    sum
}

/// Sends one bare TCP header (no options, no payload) from 127.0.0.1:`sport` to `dst` through a
/// raw socket; the kernel adds the IPv4 header.
fn send_tcp(raw: &OwnedFd, sport: u16, dst: SocketAddr, flags: u8, seq: u32) -> Result<()> {
    let SocketAddr::V4(dst) = dst else { anyhow::bail!("IPv4 only") };
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&seq.wrapping_mul(7).to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let src = [127u8, 0, 0, 1];
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    let mut sum = checksum(checksum(0, &pseudo), &h);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: h and sin are valid for the lengths given; raw is an open raw socket.
    let n = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            h.as_ptr().cast(),
            h.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    ensure!(n == h.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    Ok(())
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// (selections, raw in-flight) summed over the pool's slots.
fn pool_counts(pool: &Pool) -> Result<(u64, i64)> {
    let mut selected = 0;
    let mut inflight = 0;
    for &slot in &pool.slots {
        selected += pool.group.selected_total(slot)?;
        inflight += pool.group.loads().read(slot).raw_inflight;
    }
    Ok((selected, inflight))
}

/// Stray ACKs (no connection behind them: the listener answers RST) reach the program like SYNs
/// do, but must not be counted; bare SYNs must, one each. The SYNs are the control: they show the
/// raw packets reach the program. Fails with the program before issue 11.6 (every lookup counted)
/// and with `sk-pass` (nothing counted).
#[test]
fn stray_acks_are_not_counted_and_bare_syns_are() {
    let _machine = integration_tests::apps::shared();
    const ACKS: u16 = 200;
    const SYNS: u16 = 50;
    let ns = NetNs::new().expect("creating a network namespace (tests must run as root)");
    ns.run(|| -> Result<()> {
        let pool = Pool::new("127.0.0.1", 3, Policy::LeastLoaded, Mode::Auto)?;
        // SAFETY: a plain socket() call; the descriptor is owned right below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just opened and nothing else owns it.
        let raw = unsafe { OwnedFd::from_raw_fd(fd) };
        let before = pool_counts(&pool)?;
        for i in 0..ACKS {
            send_tcp(&raw, 20000 + i, pool.addr, TCP_ACK, 1000 + i as u32)?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let after_acks = pool_counts(&pool)?;
        for i in 0..SYNS {
            send_tcp(&raw, 40000 + i, pool.addr, TCP_SYN, 5000 + i as u32)?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let after_syns = pool_counts(&pool)?;
        println!(
            "(selected, in flight): before {before:?}, after {ACKS} stray ACKs {after_acks:?}, after {SYNS} SYNs {after_syns:?}"
        );
        ensure!(after_acks == before, "stray ACKs were counted: {before:?} -> {after_acks:?}");
        ensure!(
            after_syns.0 - after_acks.0 == SYNS as u64,
            "bare SYNs were not each counted once: {after_acks:?} -> {after_syns:?}"
        );
        // Each bare SYN is a handshake in progress until the client's RST takes it back.
        ensure!(after_syns.1 - after_acks.1 == SYNS as i64, "in flight: {after_syns:?}");
        Ok(())
    })
    .context("stray packets")
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Reconciliation (README: "the registry's reconciliation corrects both within about a second").

/// Handshakes that never complete are taken back by the controller, which then sets the fast
/// path's idle bytes again: bare SYNs to a uWSGI app (the kernel answers the SYN-ACK's RST, so
/// no connection follows) raise the slots' in-flight counts, the program clears their idle bytes
/// when it gives them a connection, and only the controller's reconciliation can bring both back.
/// The SYNs counted are the scene's control. Catches `no-reconcile` (the counts stay up) and
/// `no-idle-refresh` (the counts come back, the idle bytes do not, and the next connection misses
/// the fast path).
#[test]
fn reconciliation_takes_back_handshakes_that_never_complete() {
    const SYNS: u16 = 40;
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let dir = TempDir::new("claims-reconcile");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), UwsgiProto::Http);
    cfg.processes = 4;
    let (registry, app) = start_uwsgi(&dir, &cfg, Duration::from_millis(250));
    reconciliation_scene(&registry, &cfg, SYNS);
    drop(app);
    registry.stop();
}

/// The scene of [`reconciliation_takes_back_handshakes_that_never_complete`].
fn reconciliation_scene(registry: &Registry, cfg: &UwsgiConfig, syns: u16) {
    let service = registry.service(cfg.addr).unwrap();
    // The group's lock is taken for each reading only: held, it would stop the registry's
    // reconciliation, which is what this test watches.
    let slots: Vec<u32> = service.group().slots().unwrap().iter().map(|s| s.slot).collect();
    let loads = service.group().loads().clone();
    let inflight = || -> Vec<i64> { slots.iter().map(|&s| loads.read(s).raw_inflight).collect() };
    let idle = || -> Vec<bool> { slots.iter().map(|&s| loads.idle(s)).collect() };
    assert!(
        wait_until(Duration::from_secs(5), || inflight().iter().all(|&n| n == 0)
            && idle().iter().all(|&i| i)),
        "not idle before the scene: in flight {:?}, idle bytes {:?}",
        inflight(),
        idle()
    );
    // SAFETY: a plain socket() call; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just opened and nothing else owns it.
    let raw = unsafe { OwnedFd::from_raw_fd(fd) };
    for i in 0..syns {
        send_tcp(&raw, 30000 + i, cfg.addr, TCP_SYN, 7000 + i as u32).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let raised: i64 = inflight().iter().sum();
    println!("after {syns} bare SYNs: in flight {:?}, idle bytes {:?}", inflight(), idle());
    assert_eq!(raised, syns as i64, "the scene: each bare SYN counts until reconciled");
    let started = Instant::now();
    let back = wait_until(Duration::from_secs(3), || inflight().iter().all(|&n| n == 0));
    println!("in flight back to 0 after {:?}: {:?}", started.elapsed(), inflight());
    assert!(
        back,
        "the reconciliation did not take back the handshakes: in flight {:?}",
        inflight()
    );
    let set = wait_until(Duration::from_secs(2), || idle().iter().all(|&i| i));
    assert!(set, "the controller did not set the idle bytes again: {:?}", idle());
    // So the next connection takes the fast path.
    let fast = || service.group().stats().unwrap().get(Event::FastPath);
    let before = fast();
    one_request(cfg.addr, "/?ms=0").expect("a request");
    let took_fast = fast() - before;
    assert_eq!(took_fast, 1, "the next connection did not take the fast path");
}
