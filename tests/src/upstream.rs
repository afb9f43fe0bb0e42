//! The in-process test upstream: a hyper server on a loopback port whose behaviour each
//! request chooses by header, with exact in-flight gauges the test reads.
//!
//! Request headers: `x-delay-ms: N` answers after N ms (at most 10 minutes); `x-reset: 1`
//! then drops the connection without a response (Envoy sees an upstream reset);
//! `x-status: N` answers with status N instead of 200; `x-body-bytes: N` answers N bytes
//! (at most 16 MiB) instead of `ok`; `x-hold: 1` waits at the upstream
//! until the test opens its [`Gate`]; `x-tenant-id` keys the per-tenant gauges; `x-tag: N`
//! goes into the request's recorded [`Span`]. `GET /__stats` answers the gauges as JSON and is not counted.
//! With `capacity: Some(C)`, at most C requests are served at once and the rest wait (a
//! constrained resource); each served request takes `service_time` plus its delay.
//! With `collapse: Some(..)` the service time grows with the requests in flight beyond a
//! knee (congestion collapse, like a database under lock contention): see [`Collapse`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

pub use crate::upstream_stats::{InflightGuard, Span, TenantGauges, UpstreamStats};

/// The largest `x-body-bytes` honoured.
const MAX_BODY: usize = 16 << 20;
/// The longest `x-delay-ms` honoured.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// How the upstream behaves.
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// At most this many requests served at once; the others wait. `None`: unlimited.
    pub capacity: Option<usize>,
    /// Time every request takes on top of its `x-delay-ms`.
    pub service_time: Duration,
    /// Congestion collapse beyond a knee; `None` (the default): the service time is fixed.
    pub collapse: Option<Collapse>,
    /// Where `x-hold: 1` requests wait (a fresh, closed one by default).
    pub gate: Gate,
    /// Service times are lognormal around `service_time` (the median) with this sigma; 0
    /// (the default): fixed. Sigma 1 gives p99/p50 of about 10: a heavy tail.
    pub lognormal_sigma: f64,
    /// Multiplies every service time; settable while it runs (a database getting slower).
    pub slowdown: Slowdown,
}

/// A service-time multiplier shared by the test and the upstream (1 by default).
#[derive(Debug, Clone)]
pub struct Slowdown(Arc<AtomicU64>);

impl Default for Slowdown {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(1.0f64.to_bits())))
    }
}

impl Slowdown {
    /// Every request from now on takes `factor` times its service time.
    pub fn set(&self, factor: f64) {
        self.0.store(factor.max(0.0).to_bits(), Ordering::Relaxed);
    }

    fn factor(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// exp(sigma * N(0, 1)) from the shared generator (Box-Muller): the upstream needs a heavy
/// tail, not cryptographic randomness.
fn lognormal_factor(state: &AtomicU64, sigma: f64) -> f64 {
    let (u1, u2) = (crate::rng::unit(state), crate::rng::unit(state));
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (sigma * normal).exp()
}

/// Where requests with `x-hold: 1` wait, in flight, until it opens (at most 10 minutes): a
/// test holds every admitted request at the upstream until a whole burst has been decided,
/// so how many are admitted does not depend on timing. Clones share one gate; it starts
/// closed.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Gate {
    /// Lets every held request through, and every later one.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Holds later `x-hold` requests again.
    pub fn close(&self) {
        self.0.send_replace(false);
    }

    /// Resolves once the gate is open.
    async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`, so this only ends once the gate is open.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// A resource that slows down as it is pushed past its sweet spot: a request that arrives
/// while `n` requests (itself included) are in flight takes
/// `service_time * (1 + slope * (n - knee) / knee)` when `n > knee`, at most `max_service`.
/// With `slope > 1` throughput falls as in-flight grows past the knee, towards
/// `knee / (service_time * slope)`: the more it is offered, the less it serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Collapse {
    /// In flight up to this many, the service time is the base one (≥ 1).
    pub knee: usize,
    /// How much slower per `knee` requests in flight beyond the knee.
    pub slope: f64,
    /// The longest service time it grows to.
    pub max_service: Duration,
}

impl Collapse {
    /// The service time of a request that finds `inflight` in flight (itself included).
    #[must_use]
    pub fn service_time(&self, base: Duration, inflight: usize) -> Duration {
        let knee = self.knee.max(1);
        if inflight <= knee || !self.slope.is_finite() || self.slope <= 0.0 {
            return base;
        }
        #[allow(clippy::cast_precision_loss)]
        let factor = 1.0 + self.slope * (inflight - knee) as f64 / knee as f64;
        base.mul_f64(factor).min(self.max_service.max(base))
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    stats: Arc<UpstreamStats>,
    capacity: Option<Semaphore>,
    service_time: Duration,
    collapse: Option<Collapse>,
    gate: Gate,
    lognormal_sigma: f64,
    slowdown: Slowdown,
    rng: AtomicU64,
}

/// The error that makes hyper drop the connection without writing a response.
#[derive(Debug)]
struct DeliberateReset;

impl std::fmt::Display for DeliberateReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deliberate reset (x-reset)")
    }
}

impl std::error::Error for DeliberateReset {}

/// A response body that keeps the request counted in flight until hyper has written it
/// and dropped it.
#[derive(Debug)]
pub struct GuardedBody {
    inner: Full<Bytes>,
    _guard: Option<InflightGuard>,
}

impl GuardedBody {
    fn new(data: impl Into<Bytes>, guard: Option<InflightGuard>) -> Self {
        Self {
            inner: Full::new(data.into()),
            _guard: guard,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: u64,
) -> Result<Response<GuardedBody>, DeliberateReset> {
    if req.uri().path() == "/__stats" {
        let body = shared.stats.to_json().to_string();
        let mut resp = Response::new(GuardedBody::new(body, None));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    let tenant = header(&req, "x-tenant-id").unwrap_or_default();
    let tag = header(&req, "x-tag")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let guard = shared.stats.enter_on(tenant, conn, tag);
    let delay = header(&req, "x-delay-ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| {
            Duration::from_millis(ms).min(MAX_DELAY)
        });
    let reset = header(&req, "x-reset").is_some_and(|v| v.trim() == "1");
    let hold = header(&req, "x-hold").is_some_and(|v| v.trim() == "1");
    let status = header(&req, "x-status")
        .and_then(|v| v.trim().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let permit = match &shared.capacity {
        Some(sem) => Some(sem.acquire().await.map_err(|_| DeliberateReset)?),
        None => None,
    };
    let base = if shared.lognormal_sigma > 0.0 {
        shared
            .service_time
            .mul_f64(lognormal_factor(&shared.rng, shared.lognormal_sigma))
            .min(MAX_DELAY)
    } else {
        shared.service_time
    };
    let base = base.mul_f64(shared.slowdown.factor()).min(MAX_DELAY);
    let service = match &shared.collapse {
        Some(c) => c.service_time(base, shared.stats.inflight()),
        None => base,
    };
    if hold {
        let _ = tokio::time::timeout(MAX_DELAY, shared.gate.passed()).await;
    }
    tokio::time::sleep(service + delay).await;
    drop(permit);
    if reset {
        shared.stats.count_reset();
        return Err(DeliberateReset);
    }
    let body = header(&req, "x-body-bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or_else(
            || Bytes::from_static(b"ok\n"),
            |n| Bytes::from(vec![b'x'; n.min(MAX_BODY)]),
        );
    let mut resp = Response::new(GuardedBody::new(body, Some(guard)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-upstream",
        hyper::header::HeaderValue::from_static("wipgate-upstream"),
    );
    Ok(resp)
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes; connections still open then
/// are dropped with the runtime. For the standalone binary and for async callers.
pub async fn serve(
    listener: TcpListener,
    opts: &UpstreamOptions,
    stats: Arc<UpstreamStats>,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        stats,
        capacity: opts.capacity.map(Semaphore::new),
        service_time: opts.service_time,
        collapse: opts.collapse,
        gate: opts.gate.clone(),
        lognormal_sigma: opts.lognormal_sigma,
        slowdown: opts.slowdown.clone(),
        rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
    });
    tokio::pin!(shutdown);
    let mut conns = 0u64;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        conns += 1;
        let conn = conns;
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, Arc::clone(&shared), conn));
            // Errors here are client aborts and deliberate resets: nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A running upstream on its own thread and tokio runtime; usable from sync and async
/// tests alike. Dropping it stops the server.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    stats: Arc<UpstreamStats>,
    gate: Gate,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds 127.0.0.1:`opts.port` and serves until dropped.
    pub fn start(opts: UpstreamOptions) -> Result<Self> {
        let stats = Arc::new(UpstreamStats::default());
        let gate = opts.gate.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("wipgate-upstream".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener =
                        match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], opts.port)))
                            .await
                            .and_then(|l| Ok((l.local_addr()?, l)))
                        {
                            Ok((addr, l)) => {
                                let _ = addr_tx.send(Ok(addr));
                                l
                            }
                            Err(e) => {
                                let _ = addr_tx.send(Err(e.into()));
                                return;
                            }
                        };
                    let shutdown = async {
                        let _ = shutdown_rx.await;
                    };
                    serve(listener, &opts, thread_stats, shutdown).await;
                });
            })
            .context("spawning the upstream thread")?;
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| anyhow!("the upstream did not start: {e}"))?
            .context("binding the upstream")?;
        Ok(Self {
            addr,
            stats,
            gate,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Starts with the default options (unlimited capacity, no service time).
    pub fn start_default() -> Result<Self> {
        Self::start(UpstreamOptions::default())
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared gauges.
    #[must_use]
    pub fn stats(&self) -> &Arc<UpstreamStats> {
        &self.stats
    }

    /// The gate `x-hold: 1` requests wait at.
    #[must_use]
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Requests in flight now.
    #[must_use]
    pub fn inflight(&self) -> usize {
        self.stats.inflight()
    }

    /// The most requests ever in flight at once since the last reset.
    #[must_use]
    pub fn max_inflight(&self) -> usize {
        self.stats.max_inflight()
    }

    /// Requests received since the last reset.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.stats.total()
    }

    /// The most requests of `tenant` (its `x-tenant-id`; "" for none) in flight at once.
    #[must_use]
    pub fn max_inflight_of(&self, tenant: &str) -> usize {
        self.stats.tenant(tenant).max_inflight
    }

    /// Requests of `tenant` in flight now.
    #[must_use]
    pub fn inflight_of(&self, tenant: &str) -> usize {
        self.stats.tenant(tenant).inflight
    }

    /// Requests of `tenant` received since the last reset.
    #[must_use]
    pub fn total_of(&self, tenant: &str) -> u64 {
        self.stats.tenant(tenant).total
    }

    /// See [`UpstreamStats::reset`].
    pub fn reset_stats(&self) {
        self.stats.reset();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_slows_down_past_the_knee_only_and_is_capped() {
        let c = Collapse {
            knee: 10,
            slope: 2.0,
            max_service: Duration::from_millis(100),
        };
        let base = Duration::from_millis(20);
        assert_eq!(c.service_time(base, 1), base);
        assert_eq!(c.service_time(base, 10), base);
        assert_eq!(c.service_time(base, 15), Duration::from_millis(40));
        assert_eq!(c.service_time(base, 20), Duration::from_millis(60));
        assert_eq!(c.service_time(base, 1000), Duration::from_millis(100));
    }

    #[test]
    fn a_lognormal_sigma_of_one_has_a_heavy_tail_around_the_median() {
        let state = AtomicU64::new(7);
        let mut f: Vec<f64> = (0..20_000).map(|_| lognormal_factor(&state, 1.0)).collect();
        f.sort_by(f64::total_cmp);
        let (p50, p99) = (f[10_000], f[19_800]);
        assert!((0.9..1.1).contains(&p50), "median {p50}");
        assert!((8.0..13.0).contains(&(p99 / p50)), "p99/p50 {}", p99 / p50);
    }

    #[test]
    fn a_slowdown_multiplies_and_is_shared() {
        let s = Slowdown::default();
        assert!((s.factor() - 1.0).abs() < f64::EPSILON);
        s.clone().set(2.0);
        assert!((s.factor() - 2.0).abs() < f64::EPSILON);
    }
}
