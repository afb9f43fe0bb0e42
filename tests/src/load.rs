//! Load shapes against a listener: a burst of requests all in flight at once, an open loop
//! at a constant arrival rate, and a client that aborts mid-flight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

pub use crate::client::{send, Outcome, RequestSpec};

/// Per-request timeout of [`burst`] and [`open_loop`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most requests one [`open_loop`] sends, whatever its rate and duration.
pub const MAX_OPEN_LOOP_REQUESTS: usize = 200_000;

async fn join_all(mut set: JoinSet<Outcome>) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(set.len());
    while let Some(done) = set.join_next().await {
        // A task only ends without an outcome if it panicked or was cancelled; neither
        // happens here, and a lost outcome would show as a short result anyway.
        if let Ok(outcome) = done {
            out.push(outcome);
        }
    }
    out
}

/// `n` requests at once, each on its own connection, all in flight together; outcomes in
/// completion order.
pub async fn burst(addr: SocketAddr, n: usize, spec: RequestSpec) -> Vec<Outcome> {
    burst_with(addr, n, |_| spec.clone()).await
}

/// [`burst`] where request `i` is `spec_fn(i)` (mixed tenants, delays, ...).
pub async fn burst_with(
    addr: SocketAddr,
    n: usize,
    spec_fn: impl Fn(usize) -> RequestSpec,
) -> Vec<Outcome> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let spec = spec_fn(i);
        set.spawn(async move { send(addr, &spec, Instant::now(), REQUEST_TIMEOUT).await });
    }
    join_all(set).await
}

/// A constant arrival rate for `duration`: request `i` is due at `i / rate_per_s` seconds
/// and is sent then whether or not earlier ones have finished (an open loop); its latency
/// counts from that due time, so a slow server cannot hide its queueing (no coordinated
/// omission). Each request times out after `timeout`; the loop returns once every request
/// has an outcome, so it ends by `duration + timeout` at the latest.
pub async fn open_loop_with_timeout(
    addr: SocketAddr,
    rate_per_s: f64,
    duration: Duration,
    timeout: Duration,
    spec_fn: impl Fn(usize) -> RequestSpec,
) -> Vec<Outcome> {
    let mut set = JoinSet::new();
    if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
        return Vec::new();
    }
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let start = tokio::time::Instant::now();
    for i in 0..MAX_OPEN_LOOP_REQUESTS {
        let offset = interval.mul_f64(i as f64);
        if offset >= duration {
            break;
        }
        let due = start + offset;
        tokio::time::sleep_until(due).await;
        let spec = spec_fn(i);
        let due_std = due.into_std();
        set.spawn(async move { send(addr, &spec, due_std, timeout).await });
    }
    join_all(set).await
}

/// [`open_loop_with_timeout`] with the default per-request timeout of 30 s.
pub async fn open_loop(
    addr: SocketAddr,
    rate_per_s: f64,
    duration: Duration,
    spec_fn: impl Fn(usize) -> RequestSpec,
) -> Vec<Outcome> {
    open_loop_with_timeout(addr, rate_per_s, duration, REQUEST_TIMEOUT, spec_fn).await
}

/// A client abort: writes one HTTP/1.1 request on a raw connection, waits `after`, then
/// closes the socket without reading anything.
pub async fn abort_mid_flight(addr: SocketAddr, spec: &RequestSpec, after: Duration) -> Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(spec.to_http1(addr).as_bytes())
        .await
        .context("writing the request")?;
    stream.flush().await?;
    tokio::time::sleep(after).await;
    drop(stream);
    Ok(())
}
