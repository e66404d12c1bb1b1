//! HTTP GETs of the tests, all through the library's client ([`balancer_user::http::client`], the
//! one `reuselb status` and `reuselb top` use): reuselb's own endpoints (`/healthz`, `/metrics`,
//! `/status`), and the test apps (which answer `pid=N ...`, the pid of the worker that served).
use std::{net::SocketAddr, time::Duration};

use balancer_user::{
    http::client::{self, Blocking},
    report::Report,
};

/// Status code and body of GET `path`; `None` if nothing answered within 10 s.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = client::get_blocking(addr, path, Duration::from_secs(10)).ok()?;
    Some((r.status.as_u16(), r.body))
}

/// The `/status` report at `addr`; panics (with the answer) if there is none.
pub fn status(addr: SocketAddr) -> Report {
    match client::status_blocking(addr) {
        Ok((report, _)) => report,
        Err(e) => panic!("no /status at {addr}: {e}"),
    }
}

/// Where `reuselb run` and `reuselb daemon` serve `/status` unless told otherwise (in a test's
/// private network namespace, its own).
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The program's selections so far, summed over every worker of every service in the `/status`
/// at `addr` (each worker's count since its group was created).
pub fn selections(addr: SocketAddr) -> u64 {
    status(addr).services.iter().flat_map(|s| s.workers()).map(|w| w.selected).sum()
}

/// What [`worker_pid`] returns for a connection closed with no answer at all.
pub const EMPTY_ANSWER: &str = "empty answer: the connection closed before any response";

/// One GET of `path` from a test app over a fresh connection (each one a new reuseport
/// selection), with `client`; the serving worker's pid on a 200 answer.
pub fn worker_pid(client: &Blocking, addr: SocketAddr, path: &str) -> Result<u32, String> {
    let r = client.get(addr, path, Duration::from_secs(10)).map_err(|e| match e {
        // The server closed the connection without a byte of answer (a worker killed or
        // recycled with the request accepted): counted apart by the load loops.
        client::Error::Http { error, .. } if error.is_incomplete_message() => {
            EMPTY_ANSWER.to_owned()
        }
        e => e.to_string(),
    })?;
    if r.status != 200 {
        let start: String = r.body.chars().take(80).collect();
        return Err(format!("bad answer: {} {start:?}", r.status));
    }
    r.body
        .split("pid=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            format!("no pid in answer: {:?}", r.body.chars().take(120).collect::<String>())
        })
}

/// [`worker_pid`] with a client made for this one request.
pub fn one_request(addr: SocketAddr, path: &str) -> Result<u32, String> {
    worker_pid(&Blocking::new().map_err(|e| e.to_string())?, addr, path)
}
