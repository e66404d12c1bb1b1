//! A Kubernetes node simulated with namespaces: the DaemonSet's daemon and pods nobody lists.
//!
//! The daemon runs `reuselb daemon` with the shipped ConfigMap (deploy/kubernetes/base/
//! reuselb.yaml, only its paths moved into the test's temp dir and pin dir) in network, mount and
//! pid namespaces of its own, as a pod without `hostNetwork` or `hostPID` does: it cannot see the
//! workers' pids (SO_PEERCRED says 0). Each "pod" is a network namespace created after the daemon
//! started and named nowhere in its config, running uWSGI with the shim as the example Deployment
//! sets it up (the same environment variables, `REUSELB_POD` as the downward API would make it),
//! with the socket directory mounted read-only in a private mount namespace.
//!
//! The daemon listens on 127.0.0.1:9464 inside its own namespace (the ConfigMap's 0.0.0.0:9464);
//! the test reads `/status` from a thread in that namespace.
use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use balancer_common::{
    protocol::{self, Name, Register, Status},
    Policy,
};
use balancer_user::report::{GroupReport, Report, ServiceReport};
use integration_tests::{
    apps::{
        self, busy_workers, require, reuselb_bin, serial, shim_lib, wait_until, workspace_root,
        Load, PinDir, Proc, TempDir, UwsgiConfig, UwsgiProto,
    },
    blocked::{block_two, BlockedShare},
    http, shim_client, NetNs,
};
use rustix::process::{kill_process, Pid, Signal};

/// Where the daemon serves /status in its network namespace.
pub(crate) const METRICS: &str = "127.0.0.1:9464";
/// The app's address in every pod (as the example Deployment: 0.0.0.0:8000).
pub(crate) const APP: &str = "0.0.0.0:8000";
/// Where a pod's clients connect.
pub(crate) const CLIENT: &str = "127.0.0.1:8000";

/// The daemon's side of the node: its namespace, its files, the process.
pub(crate) struct Node {
    dir: TempDir,
    pin: PinDir,
    ns: NetNs,
    config: PathBuf,
}

impl Node {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = TempDir::new(&format!("node-{tag}"));
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let pin = PinDir::new(&format!("node-{tag}"));
        let ns = NetNs::new().expect("the daemon's network namespace");
        let config = dir.path().join("reuselb.yaml");
        let node = Self { dir, pin, ns, config };
        node.write_config(Policy::LeastLoaded);
        node
    }

    /// The shipped ConfigMap's config, its paths moved into the test's, with the default
    /// template's policy (the shipped one, speed-aware) replaced by `policy`.
    pub(crate) fn write_config(&self, policy: Policy) {
        let shipped = workspace_root().join("deploy/kubernetes/base/reuselb.yaml");
        let text = std::fs::read_to_string(&shipped).expect("the shipped ConfigMap's config");
        assert_eq!(text.matches("policy: speed-aware").count(), 1, "{text}");
        let text = text
            .replace("/sys/fs/bpf/reuselb", &self.pin.path().display().to_string())
            .replace("/run/reuselb", &self.sockets().display().to_string())
            .replace("policy: speed-aware", &format!("policy: {}", policy.name()));
        std::fs::write(&self.config, text).unwrap();
    }

    pub(crate) fn sockets(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub(crate) fn pods_socket(&self) -> PathBuf {
        self.sockets().join("pods.sock")
    }

    /// The daemon in its network namespace, in mount and pid namespaces of its own; waits until
    /// /healthz answers.
    pub(crate) fn start_daemon(&self, tag: &str) -> Proc {
        let mut cmd = self.ns.command("unshare");
        cmd.args(["--pid", "--fork", "--mount", "--propagation", "private", "--mount-proc"])
            .arg(reuselb_bin())
            .args(["daemon", "--config"])
            .arg(&self.config);
        let daemon =
            Proc::spawn("reuselb daemon", cmd, &self.dir.path().join(format!("daemon-{tag}.log")));
        let up = wait_until(Duration::from_secs(30), || {
            self.ns
                .run(|| http::get(METRICS.parse().unwrap(), "/healthz"))
                .is_some_and(|(code, _)| code == 200)
        });
        assert!(up, "the daemon did not come up:\n{}", daemon.log_tail(30));
        daemon
    }

    pub(crate) fn status(&self) -> Report {
        self.ns.run(|| http::status(METRICS.parse().unwrap()))
    }

    pub(crate) fn metrics(&self) -> String {
        self.ns.run(|| http::get(METRICS.parse().unwrap(), "/metrics")).expect("/metrics").1
    }
}

/// Signals the daemon itself (`unshare --fork` does not pass every signal on).
pub(crate) fn signal_daemon(daemon: &Proc, signal: Signal) {
    let children = apps::children_of(daemon.pid());
    let pid = children.first().copied().expect("the daemon under unshare");
    kill_process(Pid::from_raw(pid as i32).unwrap(), signal).expect("signalling the daemon");
}

pub(crate) fn pods_of(report: &Report) -> Option<&ServiceReport> {
    report.services.iter().find(|s| s.name == "pods")
}

/// The group of the pod whose network namespace has cookie `netns`.
pub(crate) fn group_of(report: &Report, netns: u64) -> Option<&GroupReport> {
    pods_of(report)?.groups.iter().find(|g| g.pod.as_ref().is_some_and(|p| p.netns == netns))
}

pub(crate) fn selected(report: &Report, netns: u64) -> u64 {
    group_of(report, netns).map(|g| g.workers.iter().map(|w| w.selected).sum()).unwrap_or(0)
}

/// One pod: its network namespace and its uWSGI.
pub(crate) struct Pod {
    pub(crate) label: String,
    cfg: UwsgiConfig,
    pub(crate) netns: u64,
    app: Proc,
    pub(crate) ns: NetNs,
}

impl Pod {
    /// uWSGI `processes` x `threads` with the shim, as the example Deployment sets it up, in a
    /// new network namespace; the socket directory read-only in its mount namespace.
    pub(crate) fn start(
        node: &Node,
        name: &str,
        template: Option<&str>,
        processes: u32,
        threads: u32,
    ) -> Self {
        let ns = NetNs::new().expect("the pod's network namespace");
        let netns = ns.run(balancer_user::registry::own_netns_cookie).expect("netns cookie");
        let mut cfg = UwsgiConfig::new(APP.parse().unwrap(), UwsgiProto::Http);
        cfg.processes = processes;
        cfg.threads = threads;
        let label = format!("default/{name}");
        let script = format!(
            "mount --bind {d} {d} && mount -o remount,bind,ro {d} && \
             if touch {d}/probe 2>/dev/null || rm -f {d}/pods.sock 2>/dev/null && \
             [ ! -e {d}/pods.sock ]; then echo 'socket dir writable'; exit 1; fi && exec \"$@\"",
            d = node.sockets().display()
        );
        let mut cmd = ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
            .args(cfg.command_line())
            .env("LD_PRELOAD", shim_lib())
            .env(protocol::ENV_LISTEN, APP)
            .env(protocol::ENV_SOCKET, node.pods_socket())
            .env(protocol::ENV_POD, &label);
        if let Some(t) = template {
            cmd.env(protocol::ENV_TEMPLATE, t);
        }
        let app = Proc::spawn(name, cmd, &node.dir.path().join(format!("uwsgi-{name}.log")));
        let ready = ns.run(|| cfg.wait_ready(Duration::from_secs(30)));
        assert!(ready, "uWSGI did not start in {name}:\n{}", app.log_tail(30));
        Self { label, cfg, netns, app, ns }
    }

    pub(crate) fn client(&self) -> SocketAddr {
        CLIENT.parse().unwrap()
    }

    /// Waits until `n` workers hold slots of this pod's group.
    pub(crate) fn wait_registered(&self, node: &Node, n: usize, daemon: &Proc) {
        let ok = wait_until(Duration::from_secs(30), || {
            group_of(&node.status(), self.netns).is_some_and(|g| g.workers.len() == n)
        });
        assert!(
            ok,
            "{}: not {n} workers registered: {:?}\ndaemon:\n{}\nuWSGI:\n{}",
            self.label,
            group_of(&node.status(), self.netns),
            daemon.log_tail(30),
            self.app.log_tail(20)
        );
    }

    /// Runs `clients` clients of `/?ms=1` for `duration`; returns (requests served, the
    /// program's selections in this pod's group, selections in every other group).
    pub(crate) fn load(&self, node: &Node, clients: usize, duration: Duration) -> (u64, u64, u64) {
        let before = node.status();
        let report = self.ns.run(|| Load::run(self.client(), clients, "/?ms=1", duration));
        assert_eq!(report.failed, 0, "{}: requests failed: {:?}", self.label, report.errors);
        let after = node.status();
        let all = |r: &Report| -> u64 {
            pods_of(r).map(|s| s.workers().map(|w| w.selected).sum()).unwrap_or(0)
        };
        let mine = selected(&after, self.netns) - selected(&before, self.netns);
        let others = (all(&after) - all(&before)).saturating_sub(mine);
        (report.ok, mine, others)
    }
}

/// How long a blocking request holds its worker process (GIL-holding busy loop).
const BLOCK_MS: u64 = 4000;
/// How long the short requests run, at most: less if blocking two workers was slow, so that they
/// end a second before the block does.
const WINDOW: Duration = Duration::from_millis(1800);

/// Short requests of the load-awareness scene, started evenly over [`WINDOW`] (an open loop: the
/// control is judged on as many as least-loaded).
const SHORT_REQUESTS: usize = 60;
/// Least-loaded may send the blocked processes at most this share of them, as everywhere else.
const MAX_SHARE_LEAST_LOADED: f64 = 0.05;

/// Blocks two distinct worker processes of `pod` with a long GIL-holding request each, then sends
/// [`SHORT_REQUESTS`] short requests over [`WINDOW`] (less if the set-up was slow: the window ends
/// inside the block); returns how many of them the blocked processes served (or failed), of how
/// many.
fn share_sent_to_blocked(pod: &Pod) -> BlockedShare {
    pod.ns.run(|| {
        let port = pod.cfg.stats_port;
        assert!(
            wait_until(Duration::from_secs(15), || busy_workers(port).is_empty()),
            "{}: workers still busy",
            pod.label
        );
        let addr = pod.client();
        // One C call holding the GIL: no other thread of a blocked process runs Python (with
        // the pure-Python loop of `ms`, they would still serve short requests slowly). Threads
        // started here live in the pod's network namespace too.
        let request = format!("/?ms=0&hold={BLOCK_MS}");
        let block = Duration::from_millis(BLOCK_MS);
        let busy = || busy_workers(port);
        let blocked = block_two(addr, &request, block, Duration::from_millis(500), busy);
        let window = blocked.window(WINDOW, Duration::from_secs(1));
        let share = blocked.share(&Load::paced(addr, SHORT_REQUESTS, "/?ms=2", window));
        // The blocks end before the next measurement starts.
        blocked.end();
        share
    })
}

/// The hash policy on the same pods, by a reload: the pods' registry starts again and adopts
/// every group with the new policy; the workers register again.
fn reload_with_hash(node: &Node, daemon: &Proc, pods: &[Pod]) {
    node.write_config(Policy::Hash);
    signal_daemon(daemon, Signal::HUP);
    let reloaded = wait_until(Duration::from_secs(30), || {
        let r = node.status();
        pods_of(&r).is_some_and(|s| {
            s.registrations.get(Status::Ok) >= 12
                && pods.iter().all(|p| {
                    group_of(&r, p.netns).is_some_and(|g| {
                        g.policy == Policy::Hash && g.adopted && g.workers.len() == 4
                    })
                })
        })
    });
    assert!(
        reloaded,
        "the reload did not adopt every group: {:?}\n{}",
        node.status(),
        daemon.log_tail(30)
    );
}

/// Prints each pod's figures, then checks them: as many short requests under each policy,
/// least-loaded spares the blocked processes, and the hash control did not.
fn assert_blocked_spared(
    pods: &[Pod],
    least_loaded: &[BlockedShare],
    hash: &[BlockedShare],
    figures: &[(u64, u64)],
) {
    for (i, pod) in pods.iter().enumerate() {
        let (ll, h) = (least_loaded[i], hash[i]);
        println!(
            "{}: 4 workers registered, selected {} / {} requests; short requests to the 2 \
             blocked processes of 4: least-loaded {}/{} ({:.1}%), hash {}/{} ({:.1}%)",
            pod.label,
            figures[i].1,
            figures[i].0,
            ll.to_blocked,
            ll.total,
            ll.share() * 100.0,
            h.to_blocked,
            h.total,
            h.share() * 100.0
        );
    }
    for (i, pod) in pods.iter().enumerate() {
        let (ll, h) = (least_loaded[i], hash[i]);
        assert_eq!(ll.total, SHORT_REQUESTS as u64, "{}: short requests sent", pod.label);
        assert_eq!(h.total, SHORT_REQUESTS as u64, "{}: short requests sent (hash)", pod.label);
        assert!(
            ll.share() <= MAX_SHARE_LEAST_LOADED,
            "{}: least-loaded sent {:.1}% to the blocked processes (hash {:.1}%)",
            pod.label,
            ll.share() * 100.0,
            h.share() * 100.0
        );
        assert!(
            h.share() >= 0.30,
            "{}: hash sent only {:.1}%: the scene blocked nothing",
            pod.label,
            h.share() * 100.0
        );
    }
}

/// Three pods nobody listed, each balanced in a group of its own, with load awareness shown
/// against the hash policy on the same pods.
#[test]
fn pods_nobody_listed_are_each_balanced_in_a_group_of_their_own() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let started = Instant::now();
    let node = Node::new("balanced");
    let daemon = node.start_daemon("1");
    // Pods come after the daemon; the third names no template (the default one applies).
    let templates = [Some("web"), Some("web"), None];
    let pods: Vec<Pod> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| Pod::start(&node, &format!("pod-{i}"), *t, 4, 20))
        .collect();
    for pod in &pods {
        pod.wait_registered(&node, 4, &daemon);
        let report = node.status();
        let g = group_of(&report, pod.netns).unwrap();
        let p = g.pod.as_ref().unwrap();
        assert_eq!((p.label.as_str(), p.template.as_str()), (pod.label.as_str(), "web"));
        assert_eq!(g.policy, Policy::LeastLoaded);
        // The daemon cannot see the pods' pids: tracked by their connections.
        assert!(g.workers.iter().all(|w| w.pid == 0), "{g:?}");
        let log = pod.app.log_text();
        let uwsgi = apps::registered_pids(&log);
        assert_eq!(
            uwsgi.len(),
            4,
            "{}: the shim logged registrations by {uwsgi:?}\nuWSGI:\n{log}\ndaemon:\n{}",
            pod.label,
            daemon.log_tail(60)
        );
    }
    assert_eq!(pods_of(&node.status()).unwrap().groups.len(), 3);
    let metrics = node.metrics();
    for pod in &pods {
        let series = format!(
            "reuselb_pod_workers{{addr=\"{APP}\",netns=\"{}\",pod=\"{}\"}} 4",
            pod.netns, pod.label
        );
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }

    let mut figures = Vec::new();
    for pod in &pods {
        let (requests, mine, others) = pod.load(&node, 8, Duration::from_secs(2));
        assert!(requests >= 100, "{}: too few requests: {requests}", pod.label);
        assert!(
            mine as f64 >= 0.9 * requests as f64,
            "{}: the program selected {mine} of {requests}",
            pod.label
        );
        assert_eq!(others, 0, "{}: load selected other pods' workers", pod.label);
        figures.push((requests, mine));
    }

    let least_loaded: Vec<_> = pods.iter().map(share_sent_to_blocked).collect();

    // The control: the hash policy on the same pods.
    reload_with_hash(&node, &daemon, &pods);
    let hash: Vec<_> = pods.iter().map(share_sent_to_blocked).collect();

    assert_blocked_spared(&pods, &least_loaded, &hash, &figures);
    signal_daemon(&daemon, Signal::TERM);
    drop(daemon);
    println!("node test: {:.1?}", started.elapsed());
}

/// A registration of a socket bound to `addr` in `ns`, naming `template` and `pod`: the reply,
/// the connection (held: closing it leaves) and the socket.
pub(crate) fn register_from(
    ns: &NetNs,
    socket: &Path,
    addr: SocketAddr,
    template: &str,
    pod: &str,
) -> (protocol::Reply, OwnedFd, std::net::TcpListener) {
    let listener = ns
        .run(|| balancer_user::listener::bind_reuseport(addr, 16))
        .expect("a reuseport listener in the pod");
    let msg = pod_registration(template, pod);
    let (reply, conn) = shim_client::register_and_hold(socket, &msg, listener.as_raw_fd());
    (reply, conn, listener)
}

/// The encoded registration of a worker of this process naming `template` and `pod`.
pub(crate) fn pod_registration(template: &str, pod: &str) -> [u8; Register::SIZE] {
    let mut msg = Register::new(std::process::id(), 0);
    msg.template = Name::new(template).unwrap();
    msg.pod = Name::new(pod).unwrap();
    msg.encode()
}

/// A pod naming a template the ConfigMap does not have: its workers are refused, it gets no
/// group, and it serves on the kernel's hash.
fn a_pod_of_an_unknown_template_serves_on_the_hash(node: &Node) {
    let refused_before =
        pods_of(&node.status()).unwrap().registrations.get(Status::UnknownTemplate);
    let c = Pod::start(node, "pod-c", Some("no-such-template"), 2, 4);
    let refused = wait_until(Duration::from_secs(10), || {
        pods_of(&node.status()).unwrap().registrations.get(Status::UnknownTemplate)
            >= refused_before + 2
    });
    assert!(refused, "pod c's workers were not refused: {:?}", node.status());
    assert!(group_of(&node.status(), c.netns).is_none(), "a group for an unknown template");
    let report = c.ns.run(|| Load::run(c.client(), 4, "/?ms=1", Duration::from_secs(1)));
    assert_eq!(report.failed, 0, "pod c: {:?}", report.errors);
    assert!(
        report.ok > 50 && report.by_pid.len() == 2,
        "pod c: {} ok, by pid {:?}",
        report.ok,
        report.by_pid
    );
    drop(c);
}

/// Pod `b` deleted: its group, pins and series go after the grace; pod `a`'s series stay.
/// Returns the namespace key `b` had.
fn deleting_a_pod_removes_its_group(node: &Node, b: Pod, a_netns: u64, daemon: &Proc) -> u64 {
    let gone_netns = b.netns;
    let pins = |netns: u64| -> Vec<String> {
        std::fs::read_dir(node.pin.path().join("pods"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("n{netns}_")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(pins(gone_netns).len(), 1, "pod b's group is not pinned");
    let deleted = Instant::now();
    drop(b);
    let removed =
        wait_until(Duration::from_secs(20), || group_of(&node.status(), gone_netns).is_none());
    assert!(removed, "pod b's group outlived it: {:?}\n{}", node.status(), daemon.log_tail(20));
    println!("pod b deleted: its group removed after {:.1?}", deleted.elapsed());
    assert!(pins(gone_netns).is_empty(), "pod b's pins are left: {:?}", pins(gone_netns));
    let metrics = node.metrics();
    assert!(
        !metrics.contains(&format!("netns=\"{gone_netns}\"")),
        "pod b's series are left:\n{metrics}"
    );
    assert!(metrics.contains(&format!("netns=\"{a_netns}\"")), "{metrics}");
    gone_netns
}

/// Pod deleted -> its group, pins and series gone; recreated -> a new group. A pod cannot
/// register into another pod's group whatever it claims. Daemon killed -> pods keep serving, and
/// the next daemon adopts every pod's group.
#[test]
fn pod_groups_come_and_go_with_their_pods_and_survive_the_daemon() {
    integration_tests::private_loopback();
    let _serial = serial();
    require("uwsgi");
    let node = Node::new("lifecycle");
    let daemon = node.start_daemon("1");
    let a = Pod::start(&node, "pod-a", Some("web"), 2, 4);
    let b = Pod::start(&node, "pod-b", Some("web"), 2, 4);
    a.wait_registered(&node, 2, &daemon);
    b.wait_registered(&node, 2, &daemon);

    // Pod a claims to be pod b, with a socket of its own: it lands in its own group.
    let (reply, conn, listener) =
        register_from(&a.ns, &node.pods_socket(), APP.parse().unwrap(), "web", &b.label);
    assert_eq!(reply.status(), Status::Ok, "{reply:?}");
    let r = node.status();
    assert_eq!(group_of(&r, a.netns).unwrap().workers.len(), 3, "{r:?}");
    assert_eq!(group_of(&r, b.netns).unwrap().workers.len(), 2, "pod a reached pod b's group");
    drop(conn);
    drop(listener);
    // Another template on the same address: refused (one address, one template); an unknown one
    // too, and the app serves on.
    for (template, status) in
        [("batch", Status::UnknownTemplate), ("nope", Status::UnknownTemplate)]
    {
        let (reply, _conn, _l) =
            register_from(&a.ns, &node.pods_socket(), APP.parse().unwrap(), template, &a.label);
        assert_eq!(reply.status(), status, "{template}: {reply:?}");
    }
    assert!(wait_until(Duration::from_secs(5), || {
        group_of(&node.status(), a.netns).is_some_and(|g| g.workers.len() == 2)
    }));
    let (requests, mine, _) = a.load(&node, 4, Duration::from_secs(1));
    assert!(mine as f64 >= 0.9 * requests as f64, "pod a: {mine} of {requests}");

    // A pod naming a template the ConfigMap does not have: refused, no group, and it serves on
    // the kernel's hash.
    a_pod_of_an_unknown_template_serves_on_the_hash(&node);

    // Pod b deleted: its group, pins and series go after the grace.
    let gone_netns = deleting_a_pod_removes_its_group(&node, b, a.netns, &daemon);

    // Recreated: a new group (a new namespace, so a new key).
    let b = Pod::start(&node, "pod-b", Some("web"), 2, 4);
    b.wait_registered(&node, 2, &daemon);
    assert_ne!(b.netns, gone_netns);
    assert_eq!(pods_of(&node.status()).unwrap().groups.len(), 2);

    // Daemon killed: the pods keep serving (their programs stay attached), and the next daemon
    // adopts both groups; the workers register again into their slots.
    drop(daemon);
    for pod in [&a, &b] {
        let report = pod.ns.run(|| Load::run(pod.client(), 4, "/?ms=1", Duration::from_secs(1)));
        assert_eq!(report.failed, 0, "{} without a daemon: {:?}", pod.label, report.errors);
        assert!(report.ok > 50, "{}: {}", pod.label, report.ok);
    }
    let daemon = node.start_daemon("2");
    for pod in [&a, &b] {
        let adopted = wait_until(Duration::from_secs(30), || {
            let r = node.status();
            group_of(&r, pod.netns).is_some_and(|g| g.adopted && g.workers.len() == 2)
                && pods_of(&r).is_some_and(|s| s.registrations.get(Status::Ok) >= 4)
        });
        assert!(
            adopted,
            "{}: not adopted: {:?}\n{}",
            pod.label,
            node.status(),
            daemon.log_tail(30)
        );
        let (requests, mine, others) = pod.load(&node, 4, Duration::from_secs(1));
        assert!(mine as f64 >= 0.9 * requests as f64, "{}: {mine} of {requests}", pod.label);
        assert_eq!(others, 0);
        println!("{} after the daemon's kill -9: adopted, selected {mine} / {requests}", pod.label);
    }
}

/// The number of pod groups is bounded: with `max_groups: 1`, a second pod is refused with a
/// clear reason (`no_free_slot`, "max_groups (1) reached") while the first stays registered.
#[test]
fn pod_groups_beyond_max_groups_are_refused_clearly() {
    integration_tests::private_loopback();
    let _machine = integration_tests::apps::shared();
    let dir = TempDir::new("node-max-groups");
    let mut options = balancer_user::registry::RegistryOptions::new(dir.path().join("pods.sock"));
    options.pods = Some(balancer_user::registry::PodOptions {
        templates: vec![balancer_user::registry::PodTemplate {
            name: "web".into(),
            policy: Policy::LeastLoaded,
            mode: balancer_user::Mode::Auto,
            weight: 1,
            max_workers: 4,
            pack_depth: 0,
            allowed_uids: vec![0],
        }],
        default_template: "web".into(),
        max_groups: 1,
        max_groups_per_pod: 8,
        max_workers_per_pod: 256,
        removal_grace: Duration::from_secs(5),
        pin_root: None,
    });
    let registry = balancer_user::registry::Registry::start(options, Vec::new()).expect("registry");
    let socket = registry.socket_path().to_path_buf();
    let (a, b) = (NetNs::new().unwrap(), NetNs::new().unwrap());
    let (first, _conn_a, _la) = register_from(&a, &socket, CLIENT.parse().unwrap(), "web", "a");
    assert_eq!(first.status(), Status::Ok, "{}", first.reason());
    let (second, _conn_b, _lb) = register_from(&b, &socket, CLIENT.parse().unwrap(), "", "b");
    assert_eq!(second.status(), Status::NoFreeSlot, "{}", second.reason());
    assert!(second.reason().contains("max_groups (1) reached"), "{}", second.reason());
    let groups = registry.pod_groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group().occupied_slots().count(), 1);
    registry.stop();
}
