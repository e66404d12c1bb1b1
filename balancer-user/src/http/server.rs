//! The HTTP server of `/metrics`, `/healthz` and `/status`: an axum router served by hyper 1's
//! HTTP/1 connections on the caller's tokio runtime. It is reachable from the network in a
//! DaemonSet, so every resource a client can hold is bounded:
//! - at most [`MAX_CONNECTIONS`] connections are served at once (more wait in the kernel's
//!   backlog), and at most as many requests run at once (tower's `ConcurrencyLimit`);
//! - a request head may be [`MAX_REQUEST`] bytes (hyper answers 431 beyond) and must arrive within
//!   [`REQUEST_TIMEOUT`]; a connection lives at most [`REQUEST_TIMEOUT`], one request each;
//! - a handler that takes longer than [`REQUEST_TIMEOUT`] is answered 503 (tower-http's
//!   `Timeout`); request bodies are not read (tower-http's `RequestBodyLimit` refuses any).
//!
//! Routes: `GET`/`HEAD` `/metrics`, `/healthz`, `/status`; 405 (with `Allow`) for other methods
//! on them, 404 naming the routes for other paths.
use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::limit::ConcurrencyLimitLayer;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use crate::metrics::{Metrics, CONTENT_TYPE};

/// Largest request head accepted (request line and headers); hyper's smallest buffer limit.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Says whether the process is healthy: `Err(reason)` makes `/healthz` answer 503 with it.
pub trait Health: Send + Sync + 'static {
    fn check(&self) -> Result<(), String>;
}

impl<F: Fn() -> Result<(), String> + Send + Sync + 'static> Health for F {
    fn check(&self) -> Result<(), String> {
        self()
    }
}

/// The running HTTP server. Dropping it (or [`Server::shutdown`]) stops it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The bound address (the actual port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct App {
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
}

/// Binds `addr` and serves, on the current tokio runtime:
/// `GET /metrics` (also HEAD): [`Metrics::encode_text`] as [`CONTENT_TYPE`];
/// `GET /healthz`: 200 `ok`, or 503 with the reason [`Health::check`] gives;
/// `GET /status`: [`Metrics::report`] as JSON (404 before there is one).
/// The error is the bind's (`AddrInUse`, say).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: impl Health,
) -> io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let router = router(App { metrics, health: Arc::new(health) });
    let task = tokio::spawn(accept_loop(listener, router));
    Ok(Server { local_addr, task })
}

fn router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(app)
        .layer(RequestBodyLimitLayer::new(0))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(ConcurrencyLimitLayer::new(MAX_CONNECTIONS))
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and the like: wait a little rather than spin.
                log::warn!("metrics server: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => log::debug!("metrics server: {err}"),
                Err(_) => log::debug!("metrics server: a client timed out"),
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// Runs `f` on a blocking thread (sources take locks and read maps).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn metrics(State(app): State<App>) -> Response {
    match blocking(move || app.metrics.encode_text()).await {
        Some(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "collecting metrics failed\n"),
    }
}

async fn healthz(State(app): State<App>) -> Response {
    match blocking(move || app.health.check()).await {
        Some(Ok(())) => text(StatusCode::OK, "ok\n"),
        Some(Err(reason)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "health check failed\n"),
    }
}

async fn status(State(app): State<App>) -> Response {
    let encoded =
        blocking(move || app.metrics.report().map(|r| serde_json::to_string_pretty(&r))).await;
    match encoded {
        Some(Some(Ok(json))) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json + "\n"))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response\n")),
        Some(None) => text(StatusCode::NOT_FOUND, "no status here\n"),
        Some(Some(Err(err))) => {
            log::warn!("encoding the status failed: {err}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "encoding the status failed\n")
        }
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "collecting the status failed\n"),
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /status\n")
}
