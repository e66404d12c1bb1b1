//! Issue 19, "Trust, round three": one pod of a node cannot crowd out the others. Each scene is a
//! hostile pod doing what the pods mode lets any pod do (bind many ports, send many registrations
//! at once, send a second message before the first is answered), then a normal pod created
//! afterwards, which must be balanced as if the hostile one were not there.
//!
//! The node is simulated as in `node.rs` (the shipped DaemonSet config, the daemon in namespaces
//! of its own); the hostile pod's registrations are made from the test in the pod's network
//! namespace, the normal pod is real uWSGI with the shim.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use balancer_common::{protocol::Status, Policy};
use balancer_user::registry::{PodOptions, PodTemplate, Registry, RegistryOptions};
use integration_tests::{
    apps::{require, serial, shared, wait_until, TempDir},
    shim_client, NetNs,
};

use crate::node::{group_of, pod_registration, pods_of, register_from, Node, Pod, CLIENT};

/// Ports of the hostile pod's groups: 64, the shipped config's `max_groups`.
const GREEDY_PORTS: u16 = 64;
/// Groups one pod may have: the shipped config's `max_groups_per_pod`.
const GREEDY_SHARE: usize = 8;
/// Registrations the hostile pod sends on one port, all before any is answered.
const FLOOD: usize = 100;
/// The shipped `web` template's `max_workers`.
const WEB_MAX_WORKERS: usize = 64;

/// The pod created after the hostile one: all 4 workers registered, and the program selects at
/// least 0.9 of its requests.
fn assert_balanced(node: &Node, later: &Pod, daemon: &integration_tests::apps::Proc) -> (u64, u64) {
    later.wait_registered(node, 4, daemon);
    let (requests, mine, others) = later.load(node, 8, Duration::from_secs(2));
    assert!(requests >= 100, "{}: too few requests: {requests}", later.label);
    assert!(
        mine as f64 >= 0.9 * requests as f64,
        "{}: the program selected {mine} of {requests} requests",
        later.label
    );
    assert_eq!(others, 0, "{}: its load was selected in other groups", later.label);
    (requests, mine)
}

/// A pod that binds 64 ports (one group each, each a program load and verification) does not
/// take every group of the node: a pod created afterwards gets its group and is balanced, and
/// the hostile pod is refused past its own share, with the reason counted.
#[test]
fn a_pod_binding_64_ports_leaves_groups_for_the_next_pod() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let started = Instant::now();
    let node = Node::new("greedy-ports");
    let daemon = node.start_daemon("1");
    let greedy = NetNs::new().expect("the hostile pod's network namespace");
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for i in 0..GREEDY_PORTS {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9000 + i);
        let (reply, conn, listener) =
            register_from(&greedy, &node.pods_socket(), addr, "web", "default/greedy");
        if reply.status() == Status::Ok {
            held.push((conn, listener));
        } else {
            refused.push((reply.status(), reply.reason().to_owned()));
        }
    }
    let later = Pod::start(&node, "later", Some("web"), 4, 20);
    let (requests, mine) = assert_balanced(&node, &later, &daemon);
    println!(
        "hostile pod: {} of {GREEDY_PORTS} ports got a group, {} refused (first: {:?}); the pod \
         made afterwards: 4 workers registered, selected {mine} of {requests} requests",
        held.len(),
        refused.len(),
        refused.first()
    );
    assert!(
        !refused.is_empty(),
        "the hostile pod got all {GREEDY_PORTS} groups: nothing limits one pod"
    );
    // Refused past its own share, with the limit named: the shipped config's
    // `max_groups_per_pod`, 8.
    assert_eq!(held.len(), GREEDY_SHARE, "groups the hostile pod got");
    for (status, reason) in &refused {
        assert_eq!(*status, Status::PodLimit, "{reason}");
        assert!(reason.contains("max_groups_per_pod (8) reached"), "{reason}");
    }
    let counted = pods_of(&node.status()).unwrap().registrations.get(Status::PodLimit);
    let metric = format!(
        "reuselb_registrations_rejected_total{{reason=\"pod_limit\",service=\"pods\"}} {}",
        refused.len()
    );
    let metrics = node.metrics();
    println!("refusals counted: {counted} in /status; `{metric}` in /metrics");
    assert_eq!(counted, refused.len() as u64, "pod_limit refusals counted in /status");
    assert!(metrics.lines().any(|l| l == metric), "no `{metric}` in /metrics:\n{metrics}");
    drop(held);
    drop(daemon);
    println!("greedy ports: {:.1?}", started.elapsed());
}

/// A pod that sends 100 registrations on one new port, all before the first is answered (while
/// its group is being made), gets at most its template's `max_workers` slots; a pod created
/// afterwards is balanced.
#[test]
fn a_hundred_registrations_on_one_port_stay_within_max_workers() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let node = Node::new("flood");
    let daemon = node.start_daemon("1");
    let flood = NetNs::new().expect("the hostile pod's network namespace");
    let addr: SocketAddr = "0.0.0.0:9100".parse().unwrap();
    // 100 sockets of one port, one per connection, every message sent before any reply is
    // read: the first makes the group, the others arrive while it is being made.
    let (conns, listeners) = flood.run(|| {
        let msg = pod_registration("web", "default/flood");
        let mut conns = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..FLOOD {
            let listener = balancer_user::listener::bind_reuseport(addr, 16).expect("a listener");
            let conn = shim_client::connect(&node.pods_socket()).expect("connecting");
            shim_client::send_registration(&conn, &msg, listener.as_raw_fd())
                .expect("sending a registration");
            conns.push(conn);
            listeners.push(listener);
        }
        (conns, listeners)
    });
    let replies: Vec<Option<Status>> = conns
        .iter()
        .map(|c| shim_client::next_reply(c, Duration::from_secs(10)).map(|r| r.status()))
        .collect();
    let ok = replies.iter().filter(|s| **s == Some(Status::Ok)).count();
    let netns = flood.run(balancer_user::registry::own_netns_cookie).expect("netns cookie");
    let workers = group_of(&node.status(), netns).map(|g| g.workers.len()).unwrap_or(0);
    println!(
        "{FLOOD} registrations sent at once on one new port: {ok} answered ok, {workers} \
         workers in the group (max_workers {WEB_MAX_WORKERS})"
    );
    assert!(
        workers <= WEB_MAX_WORKERS && ok <= WEB_MAX_WORKERS,
        "{ok} registrations accepted and {workers} workers in a group whose template's \
         max_workers is {WEB_MAX_WORKERS}"
    );
    let later = Pod::start(&node, "later", Some("web"), 4, 20);
    let (requests, mine) = assert_balanced(&node, &later, &daemon);
    println!("the pod made afterwards: selected {mine} of {requests} requests");
    drop((conns, listeners));
    drop(daemon);
}

/// A connection whose group is being made sends a second registration, for a group that exists:
/// whatever the registry does with it, when the connection closes no slot it was given is left
/// behind (without pidfds, as in Kubernetes, nothing else would ever free it).
#[test]
fn a_second_message_while_the_group_is_made_leaves_no_slot_behind() {
    integration_tests::private_loopback();
    let _machine = shared();
    let dir = TempDir::new("pods-second-message");
    let registry = pods_registry(&dir, vec![0], 64);
    let socket = registry.socket_path().to_path_buf();
    let pod = NetNs::new().unwrap();
    let existing: SocketAddr = CLIENT.parse().unwrap();
    // A worker of the existing group, held for the whole test.
    let (first, _held, _l) = register_from(&pod, &socket, existing, "web", "default/pod");
    assert_eq!(first.status(), Status::Ok, "{}", first.reason());
    let slots = |addr: SocketAddr| -> usize {
        registry
            .pod_groups()
            .iter()
            .filter(|s| s.addr.port() == addr.port())
            .map(|s| s.group().occupied_slots().count())
            .sum()
    };
    assert_eq!(slots(existing), 1);

    // The hostile connection: a registration for a new port (its group is made), then at once
    // one for the existing group, before the first is answered.
    let new_port: SocketAddr = "127.0.0.1:8001".parse().unwrap();
    let (conn, listeners) = pod.run(|| {
        let a = balancer_user::listener::bind_reuseport(new_port, 16).unwrap();
        let b = balancer_user::listener::bind_reuseport(existing, 16).unwrap();
        let msg = pod_registration("web", "default/pod");
        let conn = shim_client::connect(&socket).expect("connecting");
        shim_client::send_registration(&conn, &msg, a.as_raw_fd()).unwrap();
        shim_client::send_registration(&conn, &msg, b.as_raw_fd()).unwrap();
        (conn, (a, b))
    });
    let mut replies = Vec::new();
    while let Some(r) = shim_client::next_reply(&conn, Duration::from_secs(3)) {
        replies.push(format!("{:?}", r.status()));
    }
    let during = (slots(new_port), slots(existing));
    drop(conn);
    drop(listeners);
    let freed = wait_until(Duration::from_secs(5), || slots(new_port) == 0 && slots(existing) == 1);
    println!(
        "two messages on one connection: replies {replies:?}; slots (new group, existing group) \
         while it was open {during:?}, after it closed {:?}",
        (slots(new_port), slots(existing))
    );
    assert!(
        freed,
        "the connection closed but its slots stayed: new group {}, existing group {} (1 is the \
         held worker's)",
        slots(new_port),
        slots(existing)
    );
    assert_eq!(registry.pod_groups().len(), 2);
    registry.stop();
}

/// A registry of pods with one template, `web`, for registrations made in-process.
fn pods_registry(dir: &TempDir, allowed_uids: Vec<u32>, max_pending_per_uid: usize) -> Registry {
    let mut options = RegistryOptions::new(dir.path().join("pods.sock"));
    options.max_pending_per_uid = max_pending_per_uid;
    options.pods = Some(PodOptions {
        templates: vec![PodTemplate {
            name: "web".into(),
            policy: Policy::LeastLoaded,
            mode: balancer_user::Mode::Auto,
            weight: 1,
            max_workers: 8,
            pack_depth: 0,
            allowed_uids,
        }],
        default_template: "web".into(),
        max_groups: 8,
        max_groups_per_pod: 8,
        max_workers_per_pod: 256,
        removal_grace: Duration::from_secs(60),
        pin_root: None,
    });
    Registry::start(options, Vec::new()).expect("registry")
}

/// A template's `allowed_uids` limits root like any uid: a root worker of a pod whose template
/// lists only uid 1000 is refused.
#[test]
fn a_template_limits_root_like_any_uid() {
    integration_tests::private_loopback();
    let _machine = shared();
    let dir = TempDir::new("pods-root");
    let registry = pods_registry(&dir, vec![1000], 64);
    let pod = NetNs::new().unwrap();
    // This test runs as root: SO_PEERCRED says uid 0.
    let (reply, _conn, _l) =
        register_from(&pod, registry.socket_path(), CLIENT.parse().unwrap(), "web", "p");
    println!("root on a template allowing [1000]: {:?}: {}", reply.status(), reply.reason());
    assert_eq!(
        reply.status(),
        Status::UidNotAllowed,
        "root registered into a template that lists only uid 1000: {}",
        reply.reason()
    );
    assert!(registry.pod_groups().is_empty(), "a group was made for root");
    registry.stop();
}

/// Connections that opened and sent nothing (another pod's flood, same uid) do not push out a
/// pod's registration that waits for its group to be made.
#[test]
fn a_flood_of_connections_does_not_evict_a_registration_waiting_for_its_group() {
    integration_tests::private_loopback();
    let _machine = shared();
    let dir = TempDir::new("pods-flood-evicts");
    let registry = pods_registry(&dir, vec![0], 4);
    let socket = registry.socket_path().to_path_buf();
    let (victim, flooder) = (NetNs::new().unwrap(), NetNs::new().unwrap());
    let (conn, _listener) = victim.run(|| {
        let l = balancer_user::listener::bind_reuseport(CLIENT.parse().unwrap(), 16).unwrap();
        let msg = pod_registration("web", "default/victim");
        let conn = shim_client::connect(&socket).expect("connecting");
        shim_client::send_registration(&conn, &msg, l.as_raw_fd()).unwrap();
        (conn, l)
    });
    // While the victim's group is being made (a program load and verification), the other pod
    // opens more connections than the cap of unregistered connections per uid, sending nothing.
    let flood: Vec<_> = flooder
        .run(|| (0..16).map(|_| shim_client::connect(&socket).expect("connecting")).collect());
    let reply = shim_client::next_reply(&conn, Duration::from_secs(10));
    println!(
        "registration waiting for its group, then 16 empty connections of the same uid (cap 4): \
         {:?}",
        reply.as_ref().map(|r| (r.status(), r.reason().to_owned()))
    );
    assert_eq!(
        reply.map(|r| r.status()),
        Some(Status::Ok),
        "the waiting registration was pushed out by another pod's connections"
    );
    drop(flood);
    registry.stop();
}
