//! Metrics: the exact samples a report produces, and the HTTP endpoints read with the library's
//! client (and with raw bytes for what no client would send).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use balancer_common::{protocol::Status, Event, Policy};
use balancer_user::{
    http::{self, client},
    loader::Program,
    metrics::{Metrics, CONTENT_TYPE},
    report::{Counts, GroupReport, Mode, RegistryReport, Report, ServiceReport, WorkerReport},
};

fn worker(slot: u32, pid: u32, inflight: u64, selected: u64, completed: u64) -> WorkerReport {
    WorkerReport {
        slot,
        pid,
        weight: 2,
        epoch: 1,
        inflight,
        accepted: completed + inflight,
        completed,
        selected,
        ..Default::default()
    }
}

fn group(addr: &str, policy: Policy, program: Program, workers: Vec<WorkerReport>) -> GroupReport {
    GroupReport {
        addr: addr.parse().unwrap(),
        policy,
        pack_depth: None,
        program,
        adopted: false,
        pod: None,
        mean_response_us: None,
        workers,
        events: Counts::default(),
    }
}

fn report() -> Report {
    let mut web = group(
        "127.0.0.1:8000",
        Policy::LeastLoaded,
        Program::SelectOrMigrate,
        vec![worker(3, 42, 7, 1000, 993), worker(10, 43, 0, 5, 5)],
    );
    web.events.set(Event::FallbackSelectFailed, 4);
    web.events.set(Event::MigrateSelected, 12);
    web.events.set(Event::MigrateFallback, 1);
    let mut registrations = Counts::default();
    registrations.set(Status::Ok, 2);
    registrations.set(Status::UidNotAllowed, 1);
    let registry = RegistryReport {
        pending_closed: 30,
        evictions: 1,
        closing_backlog: 2,
        ..Default::default()
    };
    let web = ServiceReport { name: "web".into(), registrations, groups: vec![web], registry };
    let api = ServiceReport {
        name: "api".into(),
        registrations: Counts::default(),
        groups: vec![group("127.0.0.1:9000", Policy::PowerOfTwo, Program::Select, vec![])],
        registry: RegistryReport::default(),
    };
    Report::new(Mode::Daemon, Instant::now(), vec![web, api])
}

const EXPECTED: &[&str] = &[
    r#"reuselb_worker_inflight{pid="42",service="web",slot="3"} 7"#,
    r#"reuselb_worker_inflight{pid="43",service="web",slot="10"} 0"#,
    r#"reuselb_worker_weight{pid="42",service="web",slot="3"} 2"#,
    r#"reuselb_worker_selected_total{pid="42",service="web",slot="3"} 1000"#,
    r#"reuselb_worker_selected_total{pid="43",service="web",slot="10"} 5"#,
    r#"reuselb_worker_accepted_total{pid="42",service="web",slot="3"} 1000"#,
    r#"reuselb_worker_completed_total{pid="42",service="web",slot="3"} 993"#,
    r#"reuselb_workers{service="web"} 2"#,
    r#"reuselb_workers{service="api"} 0"#,
    r#"reuselb_service_info{policy="least-loaded",program="select_or_migrate",service="web"} 1"#,
    r#"reuselb_service_info{policy="p2c",program="select",service="api"} 1"#,
    r#"reuselb_fallbacks_total{reason="select_failed",service="web"} 4"#,
    r#"reuselb_fallbacks_total{reason="no_active_slot",service="web"} 0"#,
    r#"reuselb_fallbacks_total{reason="no_config",service="api"} 0"#,
    r#"reuselb_migrations_total{outcome="migrated",service="web"} 12"#,
    r#"reuselb_migrations_total{outcome="kernel_hash",service="web"} 1"#,
    r#"reuselb_registrations_total{service="web"} 2"#,
    r#"reuselb_registrations_rejected_total{reason="uid_not_allowed",service="web"} 1"#,
    r#"reuselb_registrations_rejected_total{reason="no_free_slot",service="web"} 0"#,
    r#"reuselb_registry_events_total{event="pending_closed",service="web"} 30"#,
    r#"reuselb_registry_events_total{event="eviction",service="web"} 1"#,
    r#"reuselb_registry_events_total{event="accept_backoff",service="web"} 0"#,
    r#"reuselb_registry_events_total{event="departure",service="api"} 0"#,
    r#"reuselb_registry_closing_backlog{service="web"} 2"#,
    r#"reuselb_config_reloads_total{outcome="failure"} 0"#,
    "# TYPE reuselb_worker_inflight gauge",
    "# TYPE reuselb_worker_selected_total counter",
    "# TYPE reuselb_fallbacks_total counter",
];

fn build_info() -> String {
    format!(r#"reuselb_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))
}

fn assert_lines(text: &str, expected: &[&str]) {
    let lines: Vec<&str> = text.lines().collect();
    let missing: Vec<&&str> = expected.iter().filter(|e| !lines.contains(e)).collect();
    assert!(missing.is_empty(), "missing lines {missing:#?} in:\n{text}");
}

#[test]
fn snapshot_becomes_exact_samples() {
    let m = Metrics::new();
    m.update(report());
    m.record_reload(true);
    let text = m.encode_text();
    assert_lines(&text, EXPECTED);
    assert_lines(&text, &[&build_info(), r#"reuselb_config_reloads_total{outcome="success"} 1"#]);
    // Every rejection reason is there from the start (zeros), but "ok" is not a rejection.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("reuselb_registrations_rejected_total{")
                && l.contains(r#"service="web""#))
            .count(),
        Status::ALL.len() - 1
    );
    assert!(!text.contains(r#"reason="ok""#), "{text}");
}

/// A connection sent past a blocked worker was placed by the program: it is counted in a family of
/// its own, never as a connection left to the kernel's hash (the fallbacks' alert would fire on
/// it, and under speed-aware, the default, it is routine).
#[test]
fn blocked_passes_are_not_fallbacks() {
    let mut r = report();
    r.services[0].groups[0].events.set(Event::BlockedPassedOver, 9);
    let m = Metrics::new();
    m.update(r);
    let text = m.encode_text();
    assert!(!text.contains(r#"reason="blocked_passed_over""#), "{text}");
    assert_lines(
        &text,
        &[
            r#"reuselb_blocked_passed_over_total{service="web"} 9"#,
            r#"reuselb_blocked_passed_over_total{service="api"} 0"#,
            r#"reuselb_fallbacks_total{reason="select_failed",service="web"} 4"#,
            "# TYPE reuselb_blocked_passed_over_total counter",
        ],
    );
    // Every reason of the fallbacks' family is a fallback event's (`Event::is_fallback`).
    let reasons: Vec<String> = Event::ALL
        .iter()
        .filter(|e| e.is_fallback())
        .map(|e| format!(r#"reason="{}""#, e.name()))
        .collect();
    let fallbacks: Vec<&str> =
        text.lines().filter(|l| l.starts_with("reuselb_fallbacks_total{")).collect();
    assert!(
        fallbacks.iter().all(|l| reasons.iter().any(|r| l.contains(r.as_str()))),
        "{fallbacks:#?}"
    );
}

#[test]
fn exited_workers_leave_no_stale_series() {
    let m = Metrics::new();
    m.update(report());
    assert!(m.encode_text().contains(r#"pid="43""#));
    let mut next = report();
    next.services[0].groups[0].workers.truncate(1);
    m.update(next);
    let text = m.encode_text();
    assert!(!text.contains(r#"pid="43""#), "{text}");
    assert_lines(&text, &[r#"reuselb_workers{service="web"} 1"#]);
}

#[test]
fn source_is_read_at_each_scrape() {
    let m = Metrics::new();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    m.set_source(move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let mut r = report();
        r.services[0].groups[0].workers[0].inflight = n;
        r
    });
    assert_lines(
        &m.encode_text(),
        &[r#"reuselb_worker_inflight{pid="42",service="web",slot="3"} 1"#],
    );
    assert_lines(
        &m.encode_text(),
        &[r#"reuselb_worker_inflight{pid="42",service="web",slot="3"} 2"#],
    );
}

/// A worker that serves two addresses of a service is one series, its figures summed (with the
/// slot it has at the first address); fallbacks are summed over the addresses.
#[test]
fn worker_on_two_addresses_is_one_series() {
    let mut r = report();
    r.services[0].groups[0].workers[0].slowness = Some(1);
    r.services[0].groups[0].workers[0].pace_us = Some(40_000);
    let mut busy_there = worker(0, 42, 1, 10, 9);
    busy_there.slowness = Some(5);
    busy_there.pace_us = Some(20_000);
    let mut second =
        group("[::1]:8000", Policy::LeastLoaded, Program::SelectOrMigrate, vec![busy_there]);
    second.events.set(Event::FallbackSelectFailed, 3);
    r.services[0].groups.push(second);
    let m = Metrics::new();
    m.update(r);
    let text = m.encode_text();
    assert_lines(
        &text,
        &[
            r#"reuselb_worker_inflight{pid="42",service="web",slot="3"} 8"#,
            r#"reuselb_worker_selected_total{pid="42",service="web",slot="3"} 1010"#,
            r#"reuselb_workers{service="web"} 2"#,
            r#"reuselb_fallbacks_total{reason="select_failed",service="web"} 7"#,
            r#"reuselb_registrations_total{service="web"} 2"#,
            // The most of its groups' figures, each on its own.
            r#"reuselb_worker_slowness{pid="42",service="web",slot="3"} 5"#,
            r#"reuselb_worker_pace_seconds{pid="42",service="web",slot="3"} 0.04"#,
        ],
    );
    assert!(!text.contains(r#"pid="42",service="web",slot="0""#), "{text}");
}

/// Raw bytes over a fresh connection, for what a well-behaved client would not send; the whole
/// answer (head and body).
fn raw_request(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> client::Response {
    client::get(addr, path, Duration::from_secs(10)).await.unwrap()
}

/// What a well-behaved client would not send: a wrong method, garbage, a head over the limit, a
/// client that leaves or half-closes. Each gets its error or nothing; none stops the server.
fn bad_requests_get_errors(addr: SocketAddr) {
    let resp = raw_request(addr, b"POST /metrics HTTP/1.0\r\n\r\n");
    let allow = resp.lines().find(|l| l.to_ascii_lowercase().starts_with("allow:"));
    assert!(
        resp.starts_with("HTTP/1.0 405 Method Not Allowed\r\n")
            && allow.is_some_and(|l| l.contains("GET") && l.contains("HEAD")),
        "{resp}"
    );
    let resp = raw_request(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\n"), "{resp}");

    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"hello\r\n\r\n",
        b"GET /metrics SPDY/3\r\n\r\n",
        b"GET  /metrics HTTP/1.0\r\n\r\n",
    ] {
        let resp = raw_request(addr, garbage);
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{garbage:?} -> {resp}");
    }
    // Not a path: no route.
    let resp = raw_request(addr, b"GET metrics HTTP/1.0\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 400 ") || resp.contains(" 404 "), "{resp}");
    // A head that never ends within the limit.
    let mut big = b"GET /metrics HTTP/1.0\r\nX: ".to_vec();
    big.resize(http::MAX_REQUEST + 4096, b'a');
    let resp = raw_request(addr, &big);
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    // A client that connects and leaves, and one that half-closes in the middle of a head:
    // neither is answered, neither stops the server.
    drop(TcpStream::connect(addr).unwrap());
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_healthz_404_and_bad_requests() {
    let m = Arc::new(Metrics::new());
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let server = http::serve("127.0.0.1:0".parse().unwrap(), m.clone(), move || {
        if h.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("service web: program not attached".to_owned())
        }
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    // No report yet: /status says so.
    let r = get(addr, "/status").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (404, "no status here\n"));
    m.update(report());

    let resp = raw_request(addr, b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n") || head.starts_with("HTTP/1.1 200 OK\r\n"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains(&format!("content-type: {CONTENT_TYPE}\r\n")), "{head}");
    assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
    assert_lines(body, EXPECTED);
    assert_lines(body, &[&build_info()]);

    let r = get(addr, "/status").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let back: Report = serde_json::from_str(&r.body).unwrap();
    assert_eq!(back.services, report().services);

    let r = get(addr, "/healthz").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok\n"));
    healthy.store(false, Ordering::SeqCst);
    let r = get(addr, "/healthz").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (503, "service web: program not attached\n"));

    let r = get(addr, "/nope").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (404, "not found: try /metrics, /healthz or /status\n")
    );

    tokio::task::spawn_blocking(move || bad_requests_get_errors(addr)).await.unwrap();

    // More idle connections than the server serves at once: each is dropped after the request
    // timeout at the latest, and the server answers again once they are gone.
    let idle: Vec<TcpStream> =
        (0..http::MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let blocked = client::get(addr, "/metrics", Duration::from_millis(500)).await;
    assert!(
        matches!(blocked, Err(client::Error::Timeout { .. })),
        "answered with every connection taken: {blocked:?}"
    );
    drop(idle);
    // Still serving.
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status.as_u16(), 200);
    drop(server);
}

#[tokio::test]
async fn address_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = http::serve(taken.local_addr().unwrap(), Arc::new(Metrics::new()), || Ok(()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

/// The uwsgitop figures: the response-time sum beside the answer count, busy now, the last
/// answer as Unix time, and resident memory; a worker with no answer yet has no timestamp and
/// one whose memory is unknown has no memory series.
#[test]
fn response_time_busy_last_answer_and_memory() {
    let mut r = report();
    {
        let w = &mut r.services[0].groups[0].workers[0];
        w.response_us = 2_500_000;
        w.busy = true;
        w.since_last_answer_ms = Some(1500);
        w.rss_bytes = Some(50 << 20);
        w.pace_us = Some(30_000);
        w.slowness = Some(3);
    }
    let m = Metrics::new();
    m.update(r);
    let text = m.encode_text();
    assert_lines(
        &text,
        &[
            r#"reuselb_worker_response_seconds_total{pid="42",service="web",slot="3"} 2.5"#,
            r#"reuselb_worker_response_seconds_total{pid="43",service="web",slot="10"} 0"#,
            r#"reuselb_worker_busy{pid="42",service="web",slot="3"} 1"#,
            r#"reuselb_worker_busy{pid="43",service="web",slot="10"} 0"#,
            r#"reuselb_worker_resident_memory_bytes{pid="42",service="web",slot="3"} 52428800"#,
            r#"reuselb_worker_pace_seconds{pid="42",service="web",slot="3"} 0.03"#,
            r#"reuselb_worker_slowness{pid="42",service="web",slot="3"} 3"#,
            "# TYPE reuselb_worker_response_seconds_total counter",
            "# TYPE reuselb_worker_last_answer_timestamp_seconds gauge",
        ],
    );
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let at: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("reuselb_worker_last_answer_timestamp_seconds{"))
        .map(|l| {
            assert!(l.starts_with(r#"pid="42""#), "only worker 42 has answered: {l}");
            l.rsplit_once(' ').unwrap().1.parse().unwrap()
        })
        .collect();
    assert_eq!(at.len(), 1, "{text}");
    assert!((now - 1.5 - at[0]).abs() < 2.0, "last answer at {} for now {now}", at[0]);
    assert!(!text.contains(r#"reuselb_worker_resident_memory_bytes{pid="43""#), "{text}");
    // No answer yet: no pace series; no slowness in the report (an older daemon's): none either.
    assert!(!text.contains(r#"reuselb_worker_pace_seconds{pid="43""#), "{text}");
    assert!(!text.contains(r#"reuselb_worker_slowness{pid="43""#), "{text}");
}
