//! Test helpers: a redis-server per test on a free port and a throwaway PostgreSQL cluster
//! ([`postgres`]), both the e2e harness's; the service in-process on a real socket, and a
//! tiny HTTP client. Polls with deadlines (the harness's loop), never fixed sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;
use wipgate_control::{app, open_store, AdminToken, AppState, Settings};
pub use wipgate_e2e::processes::Redis;
use wipgate_e2e::wait::poll_until_async;

pub mod postgres;

pub const TOKEN: &str = "test-admin-token";

/// A key prefix no other run uses.
pub fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("wipgate-test-{}-{nanos}:", std::process::id())
}

pub fn free_port() -> u16 {
    wipgate_e2e::processes::free_port().unwrap()
}

/// Polls `check` until it returns `Some` (then its value), panicking once `timeout` passes:
/// the harness's one deadline loop, [`wipgate_e2e::wait::poll_until_async`].
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until_async(timeout, what, check)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The Redis to use for tests that do not kill it: `REDIS_URL` when set, else our own.
pub fn test_redis() -> (String, Option<Redis>) {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = Redis::start().unwrap();
            (server.url(), Some(server))
        }
    }
}

/// One control-service replica served in-process on 127.0.0.1:<free port>.
pub struct Service {
    pub addr: SocketAddr,
    pub state: AppState,
    task: tokio::task::JoinHandle<()>,
    probes: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Starts a replica with the given extra flags (after `--listen 127.0.0.1:0`).
    pub async fn start(extra: &[&str]) -> Self {
        let mut args = vec!["wipgate-control", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let settings = Settings::parse_from(args);
        let store = open_store(&settings).unwrap();
        let state =
            AppState::new(store, AdminToken::new(Some(TOKEN.to_owned())), &settings).unwrap();
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let probes = state.start_probes();
        let router = app(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            addr,
            state,
            task,
            probes,
        }
    }

    pub async fn redis(url: &str, prefix: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--redis-url",
            url,
            "--redis-prefix",
            prefix,
            "--redis-timeout-ms",
            "300",
        ];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, None, None).await
    }

    pub async fn send(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> Reply {
        request(
            self.addr,
            method,
            path,
            Some(body.as_bytes().to_vec()),
            token,
        )
        .await
    }

    pub async fn admin(&self, method: &str, path: &str, body: &str) -> Reply {
        self.send(method, path, body, Some(TOKEN)).await
    }

    pub async fn sync(&self, body: &serde_json::Value) -> Reply {
        self.send("POST", "/v1/sync", &body.to_string(), None).await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
        self.probes.abort();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a new connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    token: Option<&str>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "wipgate-control");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}
