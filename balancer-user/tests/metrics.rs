//! Metrics: the exact samples a snapshot produces, and the HTTP endpoint scraped with a plain
//! HTTP/1.0 request over TCP.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use balancer_common::{protocol::Status, Event, Policy};
use balancer_user::{
    loader::Program,
    metrics::{self, Metrics, ServiceSnapshot, Snapshot, CONTENT_TYPE},
    SlotView, Stats,
};

fn worker(slot: u32, pid: u32, inflight: u64, selected_total: u64, completed: u64) -> SlotView {
    SlotView {
        slot,
        pid,
        weight: 2,
        epoch: 1,
        inflight,
        accepted: completed + inflight,
        completed,
        selected_total,
    }
}

fn snapshot() -> Snapshot {
    let mut web = ServiceSnapshot::new("web", Policy::LeastLoaded, Program::SelectOrMigrate);
    web.slots = vec![worker(3, 42, 7, 1000, 993), worker(10, 43, 0, 5, 5)];
    let mut stats = Stats::default();
    stats.events[Event::FallbackSelectFailed as usize] = 4;
    stats.events[Event::MigrateSelected as usize] = 12;
    stats.events[Event::MigrateFallback as usize] = 1;
    web.stats = stats;
    web.count_registration(Status::Ok);
    web.count_registration(Status::Ok);
    web.count_registration(Status::UidNotAllowed);
    let api = ServiceSnapshot::new("api", Policy::PowerOfTwo, Program::Select);
    Snapshot { services: vec![web, api] }
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
    m.update(snapshot());
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
        7
    );
    assert!(!text.contains(r#"reason="ok""#), "{text}");
}

#[test]
fn exited_workers_leave_no_stale_series() {
    let m = Metrics::new();
    m.update(snapshot());
    assert!(m.encode_text().contains(r#"pid="43""#));
    let mut next = snapshot();
    next.services[0].slots.truncate(1);
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
        let mut s = snapshot();
        s.services[0].slots[0].inflight = n;
        s
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

/// One request over a fresh connection; the whole answer (head and body).
fn request(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> String {
    request(addr, format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
}

fn split(resp: &str) -> (&str, &str) {
    resp.split_once("\r\n\r\n").unwrap_or((resp, ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_healthz_404_and_bad_requests() {
    let m = Arc::new(Metrics::new());
    m.update(snapshot());
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), m.clone(), move || {
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

    tokio::task::spawn_blocking(move || {
        let resp = get(addr, "/metrics");
        let (head, body) = split(&resp);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        assert_lines(body, EXPECTED);
        assert_lines(body, &[&build_info()]);

        let resp = get(addr, "/healthz");
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert_eq!(split(&resp).1, "ok\n");
        healthy.store(false, Ordering::SeqCst);
        let resp = get(addr, "/healthz");
        assert!(resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{resp}");
        assert_eq!(split(&resp).1, "service web: program not attached\n");

        let resp = get(addr, "/nope");
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
        let resp = request(addr, b"POST /metrics HTTP/1.0\r\n\r\n");
        assert!(
            resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
                && resp.contains("Allow: GET, HEAD\r\n"),
            "{resp}"
        );
        let resp = request(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n") && split(&resp).1.is_empty(), "{resp}");

        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"hello\r\n\r\n",
            b"GET metrics HTTP/1.0\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET  /metrics HTTP/1.0\r\n\r\n",
        ] {
            let resp = request(addr, garbage);
            assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{garbage:?} -> {resp}");
        }
        // A head that never ends within the limit.
        let mut big = b"GET /metrics HTTP/1.0\r\nX: ".to_vec();
        big.resize(metrics::MAX_REQUEST + 4096, b'a');
        let resp = request(addr, &big);
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
        // A client that connects and leaves, and one that half-closes after a bare request line.
        drop(TcpStream::connect(addr).unwrap());
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");

        // Still serving.
        let resp = get(addr, "/metrics");
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    })
    .await
    .unwrap();
    drop(server);
}

#[tokio::test]
async fn address_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = metrics::serve(taken.local_addr().unwrap(), Arc::new(Metrics::new()), || Ok(()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}
