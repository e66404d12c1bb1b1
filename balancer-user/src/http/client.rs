//! A small HTTP/1 client (hyper 1) for reuselb's own endpoints: one GET per connection, with a
//! deadline over the whole exchange. `reuselb status`, `reuselb top` and the integration tests
//! read `/status`, `/metrics` and `/healthz` through it.
use std::{net::SocketAddr, time::Duration};

use axum::http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::report::Report;

/// Time for connecting, sending the request and reading the whole answer, unless told otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a GET failed. Each message carries its cause (no `source()` chain to repeat it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr}: {error}")]
    Connect { addr: SocketAddr, error: std::io::Error },
    #[error("HTTP exchange with {addr}: {error}")]
    Http { addr: SocketAddr, error: hyper::Error },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the answer of {addr} is not UTF-8")]
    NotUtf8 { addr: SocketAddr },
    #[error("{addr}{path} answered {status}: {body}")]
    Status { addr: SocketAddr, path: String, status: StatusCode, body: String },
    #[error("the /status answer of {addr} is not a reuselb status report: {error}")]
    BadReport { addr: SocketAddr, error: serde_json::Error },
    #[error("starting a runtime for the request: {0}")]
    Runtime(std::io::Error),
}

/// An answer: its status and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: StatusCode,
    pub body: String,
}

/// GET `path` from `addr`, the whole exchange within `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Error> {
    match tokio::time::timeout(timeout, exchange(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout { addr, timeout }),
    }
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<Response, Error> {
    let stream = TcpStream::connect(addr).await.map_err(|error| Error::Connect { addr, error })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| Error::Http { addr, error })?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a GET with a path and a host is a valid request");
    let answer = sender.send_request(request).await.map_err(|error| Error::Http { addr, error })?;
    let status = answer.status();
    let body =
        answer.into_body().collect().await.map_err(|error| Error::Http { addr, error })?.to_bytes();
    conn.abort();
    let body = String::from_utf8(body.to_vec()).map_err(|_| Error::NotUtf8 { addr })?;
    Ok(Response { status, body })
}

/// [`get`] for synchronous code: a client that owns a single-threaded runtime, made once and
/// reused for every request (a load generator's thread keeps one).
#[derive(Debug)]
pub struct Blocking {
    runtime: tokio::runtime::Runtime,
}

impl Blocking {
    pub fn new() -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        Ok(Self { runtime })
    }

    /// GET `path` from `addr` over a fresh connection, the whole exchange within `timeout`.
    pub fn get(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Error> {
        self.runtime.block_on(get(addr, path, timeout))
    }
}

/// [`get`], from synchronous code, on a runtime made for this one request.
pub fn get_blocking(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Error> {
    Blocking::new()?.get(addr, path, timeout)
}

/// The body of a 200 answer to GET `path`; any other status is an [`Error::Status`].
pub fn get_ok_blocking(addr: SocketAddr, path: &str) -> Result<String, Error> {
    let r = get_blocking(addr, path, TIMEOUT)?;
    if r.status != StatusCode::OK {
        let body = r.body.trim().to_owned();
        return Err(Error::Status { addr, path: path.to_owned(), status: r.status, body });
    }
    Ok(r.body)
}

/// The `/status` report of the controller at `addr`, and the JSON text it came as.
pub fn status_blocking(addr: SocketAddr) -> Result<(Report, String), Error> {
    let body = get_ok_blocking(addr, "/status")?;
    let report = serde_json::from_str(&body).map_err(|error| Error::BadReport { addr, error })?;
    Ok((report, body))
}
