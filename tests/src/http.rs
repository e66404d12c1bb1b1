//! GETs to reuselb's own endpoints (`/healthz`, `/metrics`, `/status`) through the library's
//! HTTP client ([`balancer_user::http::client`]), the one `reuselb status` and `reuselb top` use.
use std::{net::SocketAddr, time::Duration};

use balancer_user::{http::client, report::Report};

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
