//! Table tests of [`check`]: each rejection reason, and acceptance, without a socket.
use std::net::SocketAddr;

use balancer_common::protocol::{Name, Register, Status, LAYOUT_VERSION};

use super::*;
use crate::{
    group::Mode,
    registry::pods::{PodOptions, PodTemplate},
};

const NETNS: u64 = 4096;
const COOKIE: u64 = 77;
const APP_UID: u32 = 1000;

fn addr() -> SocketAddr {
    "127.0.0.1:8000".parse().unwrap()
}

/// A fake state: one listed service (id 0) on [`addr`], `held` slots held, maybe an adopted
/// slot 3 with socket [`COOKIE`] kept for pid 42, and pod groups.
#[derive(Default)]
struct Fake {
    held: usize,
    adopted_for: Option<u32>,
    pod: Option<(Option<usize>, String)>,
    pod_groups: usize,
    /// Pod groups of the socket's network namespace.
    pod_groups_in: usize,
    /// Workers of the socket's network namespace (held and waiting).
    pod_workers: usize,
    /// Registrations waiting for the pod group being made.
    waiting: usize,
}

impl Places for Fake {
    fn group_of(&self, a: SocketAddr) -> Option<usize> {
        (a == addr()).then_some(0)
    }
    fn pod_group(&self, _: u64, a: SocketAddr) -> Option<(Option<usize>, String)> {
        self.pod.clone().filter(|_| a == addr())
    }
    fn pod_groups(&self) -> usize {
        self.pod_groups
    }
    fn pod_groups_in(&self, _: u64) -> usize {
        self.pod_groups_in
    }
    fn pod_workers(&self, _: u64) -> usize {
        self.pod_workers
    }
    fn held(&self, _: usize) -> usize {
        self.held
    }
    fn waiting(&self, _: u64, _: SocketAddr) -> usize {
        self.waiting
    }
    fn adopted(&self, _: usize, cookie: u64) -> Option<(u32, u32)> {
        self.adopted_for.filter(|_| cookie == COOKIE).map(|pid| (3, pid))
    }
}

fn listener() -> SocketFacts {
    SocketFacts {
        local: Some(addr()),
        tcp: true,
        inet_stream: true,
        listening: true,
        reuseport: true,
    }
}

fn evidence(socket: SocketFacts) -> Evidence {
    Evidence {
        cred: Ok(Cred { pid: 42, uid: APP_UID }),
        socket: Ok(socket),
        netns: Ok(NETNS),
        cookie: Ok(COOKIE),
    }
}

fn pods() -> PodOptions {
    PodOptions {
        templates: vec![PodTemplate {
            name: "web".into(),
            policy: Default::default(),
            mode: Mode::Select,
            weight: 3,
            max_workers: 2,
            pack_depth: 1,
            allowed_uids: vec![APP_UID],
        }],
        default_template: "web".into(),
        max_groups: 1,
        max_groups_per_pod: 1,
        max_workers_per_pod: 3,
        removal_grace: std::time::Duration::from_secs(1),
        pin_root: None,
    }
}

/// One case: the message, what the kernel says, the state, pods or not.
struct Case {
    name: &'static str,
    register: Register,
    data: Option<Vec<u8>>,
    fds: usize,
    truncated: bool,
    evidence: Evidence,
    fake: Fake,
    pods: bool,
}

fn case(name: &'static str) -> Case {
    Case {
        name,
        register: Register::new(42, 0),
        data: None,
        fds: 1,
        truncated: false,
        evidence: evidence(listener()),
        fake: Fake::default(),
        pods: false,
    }
}

fn run(c: &Case) -> Result<Checked, Rejection> {
    let settings = Settings::new(&[APP_UID], false, 4, 5);
    let pods = pods();
    let rules = Rules { settings: &settings, pods: c.pods.then_some(&pods), netns: NETNS };
    let data = c.data.clone().unwrap_or_else(|| c.register.encode().to_vec());
    let msg = Message { data: &data, fds: c.fds, truncated: c.truncated };
    check(&msg, &c.evidence, &rules, &c.fake)
}

#[test]
fn each_rejection_has_its_reason() {
    let mut cases = Vec::new();
    let mut c = case("garbage");
    c.data = Some(vec![1, 2, 3]);
    cases.push((c, Status::BadMessage));
    let mut c = case("another layout");
    c.register.layout = LAYOUT_VERSION + 1;
    cases.push((c, Status::LayoutMismatch));
    let mut c = case("no descriptor");
    c.fds = 0;
    cases.push((c, Status::NoDescriptor));
    let mut c = case("two descriptors");
    c.fds = 2;
    cases.push((c, Status::NoDescriptor));
    let mut c = case("descriptors cut");
    c.truncated = true;
    cases.push((c, Status::NoDescriptor));
    let mut c = case("no credentials");
    c.evidence.cred = Err("ENOTCONN".into());
    cases.push((c, Status::Internal));
    let mut c = case("uid not allowed");
    c.evidence.cred = Ok(Cred { pid: 42, uid: APP_UID + 1 });
    cases.push((c, Status::UidNotAllowed));
    let mut c = case("not a socket");
    c.evidence.socket = Err("ENOTSOCK".into());
    cases.push((c, Status::NotAListener));
    let mut c = case("udp");
    c.evidence.socket = Ok(SocketFacts { tcp: false, ..listener() });
    cases.push((c, Status::NotAListener));
    let mut c = case("not listening");
    c.evidence.socket = Ok(SocketFacts { listening: false, ..listener() });
    cases.push((c, Status::NotAListener));
    let mut c = case("no SO_REUSEPORT");
    c.evidence.socket = Ok(SocketFacts { reuseport: false, ..listener() });
    cases.push((c, Status::NotAListener));
    let mut c = case("address not balanced");
    c.evidence.socket =
        Ok(SocketFacts { local: Some("127.0.0.1:9".parse().unwrap()), ..listener() });
    cases.push((c, Status::NotAListener));
    let mut c = case("another namespace");
    c.evidence.netns = Ok(NETNS + 1);
    cases.push((c, Status::WrongNamespace));
    let mut c = case("adopted slot of another worker");
    c.fake.adopted_for = Some(43);
    cases.push((c, Status::Internal));
    let mut c = case("max_workers reached");
    c.fake.held = 4;
    cases.push((c, Status::NoFreeSlot));
    let mut c = case("unknown template");
    c.pods = true;
    c.register.template = Name::new("api").unwrap();
    cases.push((c, Status::UnknownTemplate));
    let mut c = case("the address's group has another template");
    c.pods = true;
    c.register.template = Name::new("web").unwrap();
    c.fake.pod = Some((Some(1), "other".into()));
    cases.push((c, Status::UnknownTemplate));
    let mut c = case("template's max_workers reached");
    c.pods = true;
    c.fake.pod = Some((Some(1), "web".into()));
    c.fake.held = 2;
    cases.push((c, Status::NoFreeSlot));
    let mut c = case("max_groups reached");
    c.pods = true;
    c.fake.pod_groups = 1;
    cases.push((c, Status::NoFreeSlot));
    let mut c = case("max_groups_per_pod reached");
    c.pods = true;
    c.fake.pod_groups = 1;
    c.fake.pod_groups_in = 1;
    cases.push((c, Status::PodLimit));
    let mut c = case("max_workers_per_pod reached");
    c.pods = true;
    c.fake.pod = Some((Some(1), "web".into()));
    c.fake.held = 1;
    c.fake.pod_workers = 3;
    cases.push((c, Status::PodLimit));
    for (c, status) in cases {
        let got = run(&c).map(|_| ()).map_err(|r| r.status);
        assert_eq!(got, Err(status), "{}", c.name);
    }
}

#[test]
fn a_uid_not_allowed_by_the_template_is_refused() {
    let mut c = case("template uid");
    c.pods = true;
    let settings = Settings::new(&[APP_UID, 7], false, 4, 5);
    let pods = pods();
    let rules = Rules { settings: &settings, pods: Some(&pods), netns: NETNS };
    c.evidence.cred = Ok(Cred { pid: 42, uid: 7 });
    let data = c.register.encode();
    let msg = Message { data: &data, fds: 1, truncated: false };
    let got = check(&msg, &c.evidence, &rules, &c.fake).map_err(|r| r.status);
    assert_eq!(got.map(|_| ()), Err(Status::UidNotAllowed));
}

#[test]
fn a_template_limits_root_like_any_uid() {
    let mut c = case("root");
    c.pods = true;
    c.evidence.cred = Ok(Cred { pid: 42, uid: 0 });
    let got = run(&c).map(|_| ()).map_err(|r| r.status);
    assert_eq!(got, Err(Status::UidNotAllowed), "root on a template that lists only {APP_UID}");
    // A listed service still takes root.
    c.pods = false;
    assert!(run(&c).is_ok());
    // A template that lists 0 takes it.
    let settings = Settings::new(&[APP_UID], false, 4, 5);
    let mut pods = pods();
    pods.templates[0].allowed_uids.push(0);
    let rules = Rules { settings: &settings, pods: Some(&pods), netns: NETNS };
    let data = c.register.encode();
    let msg = Message { data: &data, fds: 1, truncated: false };
    assert!(check(&msg, &c.evidence, &rules, &c.fake).is_ok());
}

#[test]
fn an_ordinary_registration_is_accepted() {
    let mut c = case("ok");
    c.register = Register { pod: Name::new("shop").unwrap(), ..Register::new(9, 0) };
    c.fake.held = 3;
    let got = run(&c).expect("accepted");
    assert_eq!(got.target, Target::Group(0));
    assert_eq!(got.cred, Cred { pid: 42, uid: APP_UID });
    assert_eq!(got.claimed_pid, 9);
    assert_eq!((got.weight, got.asked_weight, got.weight_capped), (5, 0, false));
    assert_eq!((got.adopted, got.want_socket), (None, false));
    assert_eq!(got.pod_label, "shop");
}

#[test]
fn weights_asked_are_capped() {
    for (asked, weight, capped) in [
        (1, 1, false),
        (MAX_ASKED_WEIGHT, MAX_ASKED_WEIGHT, false),
        (u32::MAX, MAX_ASKED_WEIGHT, true),
    ] {
        let mut c = case("weight");
        c.register.weight = asked;
        let got = run(&c).expect("accepted");
        assert_eq!((got.weight, got.asked_weight, got.weight_capped), (weight, asked, capped));
    }
}

#[test]
fn the_adopted_slot_goes_back_to_its_worker_even_when_full() {
    let mut c = case("adopted");
    c.fake.adopted_for = Some(42);
    c.fake.held = 4;
    assert_eq!(run(&c).expect("accepted").adopted, Some(3));
}

#[test]
fn want_socket_takes_a_shared_socket_that_no_longer_listens() {
    let mut c = case("want socket");
    c.register.flags = Register::WANT_SOCKET;
    c.evidence.socket = Ok(SocketFacts { listening: false, ..listener() });
    assert!(run(&c).expect("accepted").want_socket);
}

#[test]
fn pod_targets() {
    let mut c = case("new pod group");
    c.pods = true;
    let got = run(&c).expect("accepted");
    let new = Target::New { netns: NETNS, addr: addr(), template: "web".into() };
    assert_eq!((got.target.clone(), got.weight), (new.clone(), 3));
    c.fake.pod = Some((None, "web".into()));
    c.fake.pod_groups = 1;
    assert_eq!(run(&c).expect("being made").target, new);
    c.fake.pod = Some((Some(5), "web".into()));
    assert_eq!(run(&c).expect("exists").target, Target::Group(5));
}

#[test]
fn a_template_s_max_workers_counts_registrations_waiting_for_the_group() {
    let mut c = case("being made");
    c.pods = true;
    c.fake.pod = Some((None, "web".into()));
    c.fake.pod_groups = 1;
    c.fake.waiting = 1;
    assert!(run(&c).is_ok(), "one waits, the template allows 2");
    c.fake.waiting = 2;
    let got = run(&c).map(|_| ()).map_err(|r| r.status);
    assert_eq!(got, Err(Status::NoFreeSlot), "two wait already");
}

#[test]
fn a_pod_s_limits_name_themselves_and_spare_listed_services() {
    let mut c = case("groups per pod");
    c.pods = true;
    c.fake.pod_groups_in = 1;
    let got = run(&c).expect_err("a second group of one pod");
    assert_eq!(got.status, Status::PodLimit);
    assert!(got.reason.contains("max_groups_per_pod (1)"), "{}", got.reason);
    // Another pod's groups do not count: only the node-wide max_groups would refuse it.
    c.fake.pod_groups_in = 0;
    assert!(run(&c).is_ok());

    let mut c = case("workers per pod");
    c.pods = true;
    c.fake.pod = Some((None, "web".into()));
    c.fake.pod_groups = 1;
    c.fake.pod_groups_in = 1;
    c.fake.pod_workers = 3;
    let got = run(&c).expect_err("a fourth worker of one pod, waiting");
    assert_eq!(got.status, Status::PodLimit);
    assert!(got.reason.contains("max_workers_per_pod (3)"), "{}", got.reason);
    // The adopted slot goes back to its worker whatever the pod holds.
    let mut c = case("adopted in a full pod");
    c.pods = true;
    c.fake.pod = Some((Some(1), "web".into()));
    c.fake.pod_workers = 3;
    c.fake.adopted_for = Some(42);
    assert_eq!(run(&c).expect("its own slot").adopted, Some(3));
    // A listed service has no pod limits.
    let mut c = case("listed");
    c.fake.pod_workers = 3;
    assert!(run(&c).is_ok());
}
