//! The benchmark's own load generators, over keep-alive HTTP/1.1 connections so that
//! connection setup does not dominate what is measured: a closed loop (N connections, each
//! sends its next request when the last one is answered) for maximum throughput, and an
//! open loop (constant arrival rate, latency counted from the intended send time, so a slow
//! server cannot hide its queueing) that takes an idle connection from a pool, or opens a
//! new one, for every request. The open loop records its own send lag, so the report can
//! show that it kept the rate it was asked for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use tokio::task::{JoinHandle, JoinSet};
use wipgate_e2e::client::{connect, request_on};
use wipgate_e2e::summary::sorted_percentile;
use wipgate_e2e::RequestSpec;

/// The most requests one open loop sends, whatever its rate and duration.
const MAX_OPEN_LOOP_REQUESTS: usize = 400_000;
/// The most requests one closed-loop connection sends, whatever the duration.
const MAX_CLOSED_LOOP_REQUESTS_PER_CONN: usize = 2_000_000;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 2xx answer.
    Ok,
    /// A 503 or 429 answer: a protection (wipgate, a circuit breaker, adaptive
    /// concurrency) turned it away. The test upstream never answers these by itself.
    Rejected,
    /// Anything else: no answer within the client timeout, a connection error, a 5xx of
    /// another kind.
    Failed,
}

impl Kind {
    fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            429 | 503 => Self::Rejected,
            _ => Self::Failed,
        }
    }
}

/// One request of an open loop.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Its intended send time, from the start of the loop.
    pub due: Duration,
    /// From the intended send time to the end of the answer (or the give-up).
    pub latency: Duration,
    /// From handing the request to a ready connection to the end of the answer: what the
    /// server took, without the generator's own lag or a connect.
    pub rtt: Duration,
    /// What became of it.
    pub kind: Kind,
    /// The caller's group (a tenant's index), from the spec function.
    pub group: usize,
}

/// An open loop's requests and how well the generator kept its schedule.
#[derive(Debug, Clone)]
pub struct OpenLoopRun {
    /// Every request, in send order.
    pub recs: Vec<Rec>,
    /// The rate asked for.
    pub intended_rate: f64,
    /// Requests sent per second between the first and the last send.
    pub actual_rate: f64,
    /// How late the generator dispatched requests behind their intended send time.
    pub lag_p99: Duration,
    /// The worst such lag.
    pub lag_max: Duration,
    /// The most connections open at once.
    pub max_conns: usize,
    /// Requests the generator could not send because its connection cap was reached
    /// (counted as failed).
    pub gen_overflow: usize,
}

/// A closed loop's throughput and latencies.
#[derive(Debug, Clone)]
pub struct ClosedLoopRun {
    /// 2xx answers.
    pub ok: usize,
    /// Everything else.
    pub errors: usize,
    /// 2xx answers per second.
    pub rps: f64,
    /// Latency of every 2xx answer, from its send.
    pub latencies: Vec<Duration>,
}

/// A keep-alive connection; dropping it closes the socket and frees its pool slot.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
    open: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Idle keep-alive connections to one address, at most `max` open at once.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Conn>>,
    open: Arc<AtomicUsize>,
    max_seen: AtomicUsize,
    max: usize,
}

impl Pool {
    fn new(addr: SocketAddr, max: usize) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            open: Arc::new(AtomicUsize::new(0)),
            max_seen: AtomicUsize::new(0),
            max,
        }
    }

    fn pop_idle(&self) -> Option<Conn> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Connections the server closed meanwhile are dropped here.
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// An idle connection, else a new one; a miss when the cap is reached or the connect
    /// fails.
    async fn get(&self) -> Result<Conn, Miss> {
        if let Some(conn) = self.pop_idle() {
            return Ok(conn);
        }
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        if now > self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(Miss::Overflow);
        }
        self.max_seen.fetch_max(now, Ordering::SeqCst);
        match connect(self.addr).await {
            Ok((sender, driver)) => Ok(Conn {
                sender,
                driver,
                open: Arc::clone(&self.open),
            }),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                Err(Miss::Other)
            }
        }
    }

    fn put(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}

/// Why a request of the open loop has no answer.
enum Miss {
    /// The generator's connection cap was reached.
    Overflow,
    /// The connect or the exchange failed.
    Other,
}

/// One request on a pooled connection: its status and its round trip (from handing it
/// to a ready connection to the end of the answer).
async fn one(pool: &Pool, spec: &RequestSpec) -> Result<(u16, Duration), Miss> {
    let mut conn = pool.get().await?;
    let t0 = Instant::now();
    match request_on(&mut conn.sender, pool.addr, spec).await {
        Ok((status, _, _)) => {
            let rtt = t0.elapsed();
            pool.put(conn);
            Ok((status, rtt))
        }
        Err(_) => Err(Miss::Other),
    }
}

/// The `p`-th percentile (nearest rank) of a sample; the harness's, so both agree.
pub use wipgate_e2e::summary::percentile;

/// How the dispatcher thread did: its lag behind schedule and when it sent.
struct Dispatch {
    lags: Vec<Duration>,
    first_last: Option<(Instant, Instant)>,
}

/// A constant arrival rate for `duration`: request `i` is due at `i / rate` s and sent
/// then on an idle keep-alive connection (or a new one, at most `max_conns` open), whether
/// or not earlier ones have finished. Each request gives up `timeout` after its due time
/// (its connection is closed then). `spec_fn(i)` gives request `i` and its group. Returns
/// once every request has an outcome: by `duration + timeout` at the latest.
///
/// The schedule is kept by a dedicated OS thread that sleeps until each due time (the
/// kernel's timers are precise to tens of microseconds, tokio's only to a millisecond) and
/// spawns the request onto the runtime.
pub async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    timeout: Duration,
    max_conns: usize,
    spec_fn: impl Fn(usize) -> (RequestSpec, usize) + Send + 'static,
) -> OpenLoopRun {
    let pool = Arc::new(Pool::new(addr, max_conns));
    let mut run = OpenLoopRun {
        recs: Vec::new(),
        intended_rate: rate,
        actual_rate: 0.0,
        lag_p99: Duration::ZERO,
        lag_max: Duration::ZERO,
        max_conns: 0,
        gen_overflow: 0,
    };
    if !(rate.is_finite() && rate > 0.0) {
        return run;
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let handle = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(5);
    let thread_pool = Arc::clone(&pool);
    let dispatcher = std::thread::Builder::new()
        .name("open-loop".into())
        .spawn(move || {
            let mut d = Dispatch {
                lags: Vec::new(),
                first_last: None,
            };
            for i in 0..MAX_OPEN_LOOP_REQUESTS {
                #[allow(clippy::cast_precision_loss)]
                let offset = interval.mul_f64(i as f64);
                if offset >= duration {
                    break;
                }
                let due = start + offset;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let sent = Instant::now();
                d.lags.push(sent.saturating_duration_since(due));
                d.first_last = Some(d.first_last.map_or((sent, sent), |(f, _)| (f, sent)));
                let (spec, group) = spec_fn(i);
                let pool = Arc::clone(&thread_pool);
                let task = handle.spawn(async move {
                    let deadline = tokio::time::Instant::from_std(due + timeout);
                    let answer = tokio::time::timeout_at(deadline, one(&pool, &spec)).await;
                    let latency = due.elapsed();
                    let (kind, rtt, overflow) = match answer {
                        Ok(Ok((status, rtt))) => (Kind::of_status(status), rtt, false),
                        Ok(Err(Miss::Overflow)) => (Kind::Failed, latency, true),
                        Ok(Err(Miss::Other)) | Err(_) => (Kind::Failed, latency, false),
                    };
                    let rec = Rec {
                        due: due.saturating_duration_since(start),
                        latency,
                        rtt,
                        kind,
                        group,
                    };
                    (rec, overflow)
                });
                if tx.send(task).is_err() {
                    break;
                }
            }
            d
        });
    let Ok(dispatcher) = dispatcher else {
        return run;
    };
    let mut tasks = Vec::new();
    while let Some(task) = rx.recv().await {
        tasks.push(task);
    }
    for task in tasks {
        if let Ok((rec, overflow)) = task.await {
            run.recs.push(rec);
            run.gen_overflow += usize::from(overflow);
        }
    }
    // The channel closed, so the thread is past its loop: joining it is immediate.
    let Ok(Ok(mut d)) = tokio::task::spawn_blocking(move || dispatcher.join()).await else {
        return run;
    };
    if let Some((first, last)) = d.first_last {
        let span = last.saturating_duration_since(first).as_secs_f64();
        if span > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let gaps = d.lags.len().saturating_sub(1) as f64;
            run.actual_rate = gaps / span;
        }
    }
    d.lags.sort_unstable();
    run.lag_p99 = sorted_percentile(&d.lags, 99.0);
    run.lag_max = d.lags.last().copied().unwrap_or_default();
    run.max_conns = pool.max_seen.load(Ordering::SeqCst);
    run
}

/// `conns` keep-alive connections, each sending `spec` again as soon as the last answer is
/// in, for `duration`: the most the path sustains with that many requests in flight.
pub async fn closed_loop(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    spec: &RequestSpec,
) -> ClosedLoopRun {
    let end = Instant::now() + duration;
    let mut set = JoinSet::new();
    for _ in 0..conns.max(1) {
        let spec = spec.clone();
        set.spawn(async move {
            let mut ok = 0usize;
            let mut errors = 0usize;
            let mut latencies = Vec::new();
            let mut conn = connect(addr).await.ok();
            for _ in 0..MAX_CLOSED_LOOP_REQUESTS_PER_CONN {
                if Instant::now() >= end {
                    break;
                }
                let Some((sender, _)) = conn.as_mut() else {
                    errors += 1;
                    conn = connect(addr).await.ok();
                    continue;
                };
                let t0 = Instant::now();
                let left = end.saturating_duration_since(t0) + Duration::from_secs(5);
                match tokio::time::timeout(left, request_on(sender, addr, &spec)).await {
                    Ok(Ok((status, _, _))) if Kind::of_status(status) == Kind::Ok => {
                        ok += 1;
                        latencies.push(t0.elapsed());
                    }
                    Ok(Ok(_)) => errors += 1,
                    Ok(Err(_)) | Err(_) => {
                        errors += 1;
                        if let Some((_, driver)) = conn.take() {
                            driver.abort();
                        }
                        conn = connect(addr).await.ok();
                    }
                }
            }
            if let Some((_, driver)) = conn.take() {
                driver.abort();
            }
            (ok, errors, latencies)
        });
    }
    let started = end.checked_sub(duration).unwrap_or(end);
    let mut run = ClosedLoopRun {
        ok: 0,
        errors: 0,
        rps: 0.0,
        latencies: Vec::new(),
    };
    while let Some(done) = set.join_next().await {
        if let Ok((ok, errors, latencies)) = done {
            run.ok += ok;
            run.errors += errors;
            run.latencies.extend(latencies);
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    #[allow(clippy::cast_precision_loss)]
    let rps = run.ok as f64 / elapsed;
    run.rps = rps;
    run
}
