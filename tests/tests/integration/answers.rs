//! When a request counts as done: at its answer, not when the worker closes the connection.
//!
//! An app server closes a connection some time after it answered (uWSGI calls the answer's
//! `close()` and takes the GIL back first), while the client has the whole answer at once and
//! places its next connection. These tests check that the worker counts as free from its answer
//! on, and that each request of a kept-alive connection is counted once. Both fail against the
//! broken builds of `cargo xtask prove`: a shim that counts nothing leaves `completed` unchanged,
//! and a program that selects nothing leaves in-flight below 0 once the shim counts the answer.
use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use balancer_user::{
    registry::{Registry, RegistryOptions, Service},
    shared_loads::SharedLoads,
    Mode,
};
use integration_tests::{
    apps::{free_port, loopback, require, serial, wait_until, TempDir, UwsgiConfig, UwsgiProto},
    registered::{least_loaded_group, uwsgi_under},
};

/// (accepted, completed, in flight) summed over the service's slots.
fn totals(service: &Service) -> (u64, u64, i64) {
    let group = service.group();
    let slots = group.slots().expect("slots");
    slots.iter().fold((0, 0, 0), |(a, c, f), s| {
        let r = group.loads().read(s.slot);
        (a + r.accepted, c + r.completed, f + r.raw_inflight)
    })
}

/// (working, start sum) over the service's slots, and the group's mean, in microseconds.
fn work(service: &Service) -> (i64, u64, u64) {
    let group = service.group();
    let slots = group.slots().expect("slots");
    let (working, sum) = slots.iter().fold((0, 0), |(w, s): (i64, u64), slot| {
        let r = group.loads().read(slot.slot);
        (w + r.working, s.wrapping_add(r.start_sum_us))
    });
    (working, sum, group.loads().group_mean_us())
}

/// uWSGI (`proto`, 2 single-threaded workers, gil_app) under an in-process registry that never
/// reconciles, so that only the program and the shim move the counters.
fn start(
    dir: &TempDir,
    proto: UwsgiProto,
) -> (Registry, UwsgiConfig, integration_tests::apps::Proc) {
    require("uwsgi");
    let mut cfg = UwsgiConfig::new(loopback(free_port()), proto);
    cfg.processes = 2;
    cfg.threads = 1;
    let mut options = RegistryOptions::new(dir.path().join("shim.sock"));
    options.reconcile_interval = Duration::from_secs(3600);
    let registry = Registry::start(options, vec![(cfg.addr, least_loaded_group(Mode::Auto))])
        .expect("registry");
    let app = uwsgi_under(&registry, &cfg, &dir.path().join("uwsgi.log"));
    (registry, cfg, app)
}

/// Sends one HTTP/1.1 request on `s` and reads its answer (headers and `Content-Length` body).
fn exchange(s: &mut TcpStream, path: &str) -> String {
    send(s, path);
    read_answer(s)
}

/// Sends one HTTP/1.1 request for `path` on `s`.
fn send(s: &mut TcpStream, path: &str) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
}

/// Reads one answer from `s`: headers and their `Content-Length` body.
fn read_answer(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("a Content-Length header");
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        let n = s.read(&mut chunk).expect("read the answer");
        assert!(n > 0, "the connection closed before the whole answer: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A worker that answered and keeps the connection 1.5 s longer (the answer's `close()` waits)
/// counts as free as soon as the client has the answer: in flight is 0 while the server still
/// holds the connection, and the close does not count the request a second time.
#[test]
fn a_worker_is_free_once_it_answered_before_it_closes() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("answers-linger");
    let (registry, cfg, app) = start(&dir, UwsgiProto::Http);
    let service = registry.service(cfg.addr).unwrap();
    let (a0, c0, f0) = totals(service);
    assert_eq!(f0, 0, "in flight before any request");
    let mut s = TcpStream::connect(cfg.addr).expect("connect");
    let answer = exchange(&mut s, "/?ms=1&linger=1500");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answered = Instant::now();
    // The server still holds the connection: no end of stream yet.
    s.set_nonblocking(true).unwrap();
    let mut one = [0u8; 1];
    let still_open = matches!(s.read(&mut one), Err(e) if e.kind() == ErrorKind::WouldBlock);
    let (a1, c1, f1) = totals(service);
    println!(
        "after the answer ({} ms): accepted +{}, completed +{}, in flight {f1}; connection still \
         open: {still_open}",
        answered.elapsed().as_millis(),
        a1 - a0,
        c1 - c0
    );
    assert!(still_open, "the worker closed at once: the test shows nothing");
    assert_eq!((a1 - a0, c1 - c0), (1, 1), "the answer was not counted as the request's end");
    assert_eq!(f1, 0, "in flight is not 0 after the answer: the worker does not count as free");
    // The close comes later and counts nothing more.
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut one).expect("end of stream"), 0);
    // The FIN we saw comes from the worker's close: its hook ran before it.
    let (a2, c2, f2) = totals(service);
    println!("after the close: accepted +{}, completed +{}, in flight {f2}", a2 - a0, c2 - c0);
    assert_eq!((a2 - a0, c2 - c0, f2), (1, 1, 0), "the close counted the request again");
    // The work figures: nothing being worked on, and a mean service time learnt (the request
    // took about 1 ms; its linger after the answer is not service time).
    let (working, sum, mean) = work(service);
    println!("work figures: working {working}, start sum {sum}, mean {mean} us");
    assert_eq!((working, sum), (0, 0), "work figures not back to 0");
    assert!(mean > 0 && mean < 1_000_000, "mean service time {mean} us");
    // speed-aware's recent time: the one worker that answered set it to that request's time
    // (its first answer is its first recent time), at the answer.
    let set: Vec<_> = {
        let group = service.group();
        let slots = group.slots().expect("slots");
        slots
            .iter()
            .map(|s| group.loads().read(s.slot))
            .filter(|r| r.recent_at_us != 0)
            .map(|r| (r.recent_us, r.recent_at_us))
            .collect()
    };
    let answered_us = SharedLoads::now_us() - answered.elapsed().as_micros() as u64;
    println!("recent times set: {set:?}, answer at {answered_us} us");
    assert_eq!(set.len(), 1, "one worker answered: {set:?}");
    let (recent, at) = set[0];
    assert!(recent > 0 && recent < 1_000_000, "recent time {recent} us");
    assert!(
        at.abs_diff(answered_us) < 1_000_000,
        "recent time set at {at}, answer at {answered_us}"
    );
    drop(app);
    registry.stop();
}

/// A kept-alive connection (uWSGI `http11-socket`) carrying three requests counts each one: in
/// flight is 1 while the second (slow) request runs and 0 between requests, and accepted and
/// completed grow by 3 for the one connection.
#[test]
fn each_request_of_a_kept_alive_connection_is_counted() {
    integration_tests::private_loopback();
    let _serial = serial();
    let dir = TempDir::new("answers-keepalive");
    let (registry, cfg, app) = start(&dir, UwsgiProto::Http11);
    let service = registry.service(cfg.addr).unwrap();
    let (a0, c0, _) = totals(service);
    let mut s = TcpStream::connect(cfg.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let first = exchange(&mut s, "/?ms=1");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    std::thread::sleep(Duration::from_millis(100));
    let between = totals(service);
    // The second request runs 1.5 s: look at the counts in the middle of it.
    send(&mut s, "/?ms=1500");
    std::thread::sleep(Duration::from_millis(600));
    let during = totals(service);
    let (working, sum, _) = work(service);
    let age_ms = (SharedLoads::now_us() * working as u64).saturating_sub(sum) / 1000;
    let second = read_answer(&mut s);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let third = exchange(&mut s, "/?ms=1");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    drop(s);
    let settled = wait_until(Duration::from_secs(3), || {
        let (a, c, f) = totals(service);
        a - a0 == 3 && c - c0 == 3 && f == 0
    });
    let end = totals(service);
    let rel = |t: (u64, u64, i64)| (t.0 - a0, t.1 - c0, t.2);
    println!(
        "(accepted, completed, in flight): between requests {:?}, during the slow one {:?}, \
         at the end {:?}",
        rel(between),
        rel(during),
        rel(end)
    );
    assert_eq!(rel(between), (1, 1, 0), "after the first answer");
    assert_eq!(rel(during), (2, 1, 1), "while the second request runs");
    println!("while the slow request runs: working {working}, its age {age_ms} ms");
    assert_eq!(working, 1, "working while the slow request runs");
    assert!((400..1400).contains(&age_ms), "its age: {age_ms} ms, sent 600 ms before");
    assert!(settled, "one connection, three requests: expected (3, 3, 0), got {:?}", rel(end));
    drop(app);
    registry.stop();
}
