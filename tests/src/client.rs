//! One HTTP/1.1 request on its own fresh connection, with its outcome: the load generator's
//! building block. A fresh connection per request means no pool ever queues requests
//! behind one another, so the concurrency a test asks for is the concurrency Envoy sees.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The tenant header the harness sets and reads (the contract's default).
pub const TENANT_HEADER: &str = "x-tenant-id";

/// What to send: a GET of `path` with extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// Path and query, e.g. `/` or `/items?id=3`.
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self::get("/")
    }
}

impl RequestSpec {
    /// A GET of `path` with no extra headers.
    #[must_use]
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets `x-tenant-id`.
    #[must_use]
    pub fn tenant(self, tenant: impl Into<String>) -> Self {
        self.header(TENANT_HEADER, tenant)
    }

    /// Asks the test upstream to answer after `ms` milliseconds (`x-delay-ms`).
    #[must_use]
    pub fn delay_ms(self, ms: u64) -> Self {
        self.header("x-delay-ms", ms.to_string())
    }

    /// Asks the test upstream to hold the request until its gate opens (`x-hold: 1`).
    #[must_use]
    pub fn hold(self) -> Self {
        self.header("x-hold", "1")
    }

    /// Asks the test upstream to drop the connection instead of answering (`x-reset: 1`).
    #[must_use]
    pub fn reset(self) -> Self {
        self.header("x-reset", "1")
    }

    /// The `x-tenant-id` value, if set.
    #[must_use]
    pub fn tenant_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(TENANT_HEADER))
            .map(|(_, v)| v.as_str())
    }

    /// The raw HTTP/1.1 request text (for raw-socket clients).
    #[must_use]
    pub fn to_http1(&self, addr: SocketAddr) -> String {
        let mut text = format!("GET {} HTTP/1.1\r\nhost: {addr}\r\n", self.path);
        for (n, v) in &self.headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        text
    }
}

/// What became of one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status; `None` when the request failed below HTTP (connect error, reset,
    /// timeout): see `error`.
    pub status: Option<u16>,
    /// Response headers (empty without a response).
    pub headers: HeaderMap,
    /// Response body (empty without a response).
    pub body: Bytes,
    /// From the send (or, in an open loop, the intended send) to the end of the body.
    pub latency: Duration,
    /// The request's `x-tenant-id`.
    pub tenant: Option<String>,
    /// Why there is no status.
    pub error: Option<String>,
}

impl Outcome {
    /// A response header as text.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-wipgate-reason` of a rejection.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        self.header("x-wipgate-reason")
    }

    /// The body as (lossy) UTF-8 text.
    #[must_use]
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn body_json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the body is not JSON")
    }

    /// A 2xx status.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The response part of an outcome.
type Answer = (u16, HeaderMap, Bytes);

/// A fresh HTTP/1.1 connection to `addr`, and the task driving it (abort it when done).
pub async fn connect(
    addr: SocketAddr,
) -> Result<(
    http1::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

/// One request on an open connection; the connection may be reused afterwards.
pub async fn request_on(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    spec: &RequestSpec,
) -> Result<(u16, HeaderMap, Bytes)> {
    sender.ready().await?;
    let mut builder = Request::get(spec.path.as_str()).header(http::header::HOST, addr.to_string());
    for (n, v) in &spec.headers {
        builder = builder.header(n.as_str(), v.as_str());
    }
    let resp = sender
        .send_request(builder.body(Empty::<Bytes>::new())?)
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

async fn exchange(addr: SocketAddr, spec: &RequestSpec) -> Result<Answer> {
    let (mut sender, driver) = connect(addr).await?;
    let result = request_on(&mut sender, addr, spec).await;
    // The connection is used once: close it.
    driver.abort();
    result
}

/// Sends `spec` to `addr` on a new connection; `started` is when the latency clock starts
/// (now, or the intended send time of an open loop), `timeout` bounds the whole exchange.
pub async fn send(
    addr: SocketAddr,
    spec: &RequestSpec,
    started: Instant,
    timeout: Duration,
) -> Outcome {
    let result = tokio::time::timeout(timeout, exchange(addr, spec)).await;
    let latency = started.elapsed();
    let tenant = spec.tenant_id().map(str::to_owned);
    match result {
        Ok(Ok((status, headers, body))) => Outcome {
            status: Some(status),
            headers,
            body,
            latency,
            tenant,
            error: None,
        },
        Ok(Err(e)) => failed(latency, tenant, format!("{e:#}")),
        Err(_) => failed(latency, tenant, format!("timed out after {timeout:?}")),
    }
}

fn failed(latency: Duration, tenant: Option<String>, error: String) -> Outcome {
    Outcome {
        status: None,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        latency,
        tenant,
        error: Some(error),
    }
}
