//! The benchmark's own load generators, over keep-alive HTTP/1.1 connections so that
//! connection setup does not dominate what is measured: a closed loop (N connections, each
//! sends its next request when the last one is answered) for maximum throughput, and an
//! open loop (constant arrival rate, latency counted from the intended send time, so a slow
//! server cannot hide its queueing) that takes an idle connection from a pool, or opens a
//! new one, for every request. The open loop's arrivals are evenly spaced or Poisson, and
//! its clients may honour `retry-after` (a rejected request is sent again that many seconds
//! later). It records its own send lag, so the report can show that it kept the rate it was
//! asked for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// 0 for a request's first attempt; n for its n-th retry (its `due` is then when the
    /// client sent it again: the rejection plus its `retry-after`).
    pub attempt: u32,
    /// The answer's `retry-after`, if it had one.
    pub retry_after: Option<Duration>,
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

/// What one exchange on a pooled connection answered.
struct Answer {
    status: u16,
    /// From handing the request to a ready connection to the end of the answer.
    rtt: Duration,
    /// The answer's `retry-after` in seconds (the delay form; decimals accepted).
    retry_after: Option<Duration>,
}

/// One request on a pooled connection.
async fn one(pool: &Pool, spec: &RequestSpec) -> Result<Answer, Miss> {
    let mut conn = pool.get().await?;
    let t0 = Instant::now();
    match request_on(&mut conn.sender, pool.addr, spec).await {
        Ok((status, headers, _)) => {
            let rtt = t0.elapsed();
            pool.put(conn);
            let retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            Ok(Answer {
                status,
                rtt,
                retry_after,
            })
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

/// When the open loop's requests are due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Request `i` at `i / rate`.
    Even,
    /// A Poisson process of `rate` (exponential gaps), reproducible from `seed` (not 0).
    Poisson {
        /// The generator's seed.
        seed: u64,
    },
}

/// Clients that honour `retry-after`: a request answered 429 or 503 with a `retry-after` is
/// sent again that long after the answer, as the server said (jitter included, if the server
/// adds any), at most `max_retries` times, and never once due after `until` (from the start
/// of the loop): the client gives up then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Retries of one request at most.
    pub max_retries: u32,
    /// No retry is due after this.
    pub until: Duration,
}

/// An open loop's shape.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    /// First attempts per second.
    pub rate: f64,
    /// How long first attempts are sent.
    pub duration: Duration,
    /// Each attempt gives up this long after its due time (its connection is closed then).
    pub timeout: Duration,
    /// Connections open at once at most.
    pub max_conns: usize,
    /// Evenly spaced or Poisson.
    pub arrivals: Arrivals,
    /// Whether rejected requests come back after their `retry-after`.
    pub retry: Option<Retry>,
}

/// A constant arrival rate for `duration`: request `i` is due at `i / rate` s and sent
/// then on an idle keep-alive connection (or a new one, at most `max_conns` open), whether
/// or not earlier ones have finished. Each request gives up `timeout` after its due time
/// (its connection is closed then). `spec_fn(i)` gives request `i` and its group. Returns
/// once every request has an outcome: by `duration + timeout` at the latest.
pub async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    timeout: Duration,
    max_conns: usize,
    spec_fn: impl Fn(usize) -> (RequestSpec, usize) + Send + 'static,
) -> OpenLoopRun {
    let shape = OpenLoop {
        rate,
        duration,
        timeout,
        max_conns,
        arrivals: Arrivals::Even,
        retry: None,
    };
    open_loop_with(addr, shape, spec_fn).await
}

/// One request from its due time: its attempts, each with its outcome (more than one only
/// when `retry` sends it again after a rejection).
async fn attempts(
    pool: Arc<Pool>,
    spec: RequestSpec,
    group: usize,
    start: Instant,
    first_due: Instant,
    timeout: Duration,
    retry: Option<Retry>,
) -> (Vec<Rec>, usize) {
    let mut recs = Vec::new();
    let mut overflows = 0;
    let mut due = first_due;
    // Each round sends one attempt; `attempt` grows every round and is capped by the retry
    // policy, so the loop is bounded.
    for attempt in 0u32.. {
        if attempt > 0 {
            // A retry, seconds later (the first attempt is spawned at its due time: a timer
            // would only add tokio's millisecond granularity to it).
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        let deadline = tokio::time::Instant::from_std(due + timeout);
        let answer = tokio::time::timeout_at(deadline, one(&pool, &spec)).await;
        let latency = due.elapsed();
        let (kind, rtt, retry_after) = match answer {
            Ok(Ok(a)) => (Kind::of_status(a.status), a.rtt, a.retry_after),
            Ok(Err(Miss::Overflow)) => {
                overflows += 1;
                (Kind::Failed, latency, None)
            }
            Ok(Err(Miss::Other)) | Err(_) => (Kind::Failed, latency, None),
        };
        recs.push(Rec {
            due: due.saturating_duration_since(start),
            latency,
            rtt,
            kind,
            group,
            attempt,
            retry_after,
        });
        let next = match (retry, retry_after) {
            (Some(p), Some(after)) if kind == Kind::Rejected && attempt < p.max_retries => {
                Instant::now() + after
            }
            _ => break,
        };
        if retry.is_some_and(|p| next.saturating_duration_since(start) > p.until) {
            break;
        }
        due = next;
    }
    (recs, overflows)
}

/// An open loop of `shape`: first attempts due by its arrivals (request `i`, from
/// `spec_fn(i)` with its group), each sent then on an idle keep-alive connection (or a new
/// one, at most `max_conns` open) whether or not earlier ones have finished; each attempt
/// gives up `timeout` after its due time. Returns once every request has an outcome.
///
/// The schedule is kept by a dedicated OS thread that sleeps until each due time (the
/// kernel's timers are precise to tens of microseconds, tokio's only to a millisecond) and
/// spawns the request onto the runtime; retries, seconds later, are timed by tokio.
pub async fn open_loop_with(
    addr: SocketAddr,
    shape: OpenLoop,
    spec_fn: impl Fn(usize) -> (RequestSpec, usize) + Send + 'static,
) -> OpenLoopRun {
    let OpenLoop {
        rate,
        duration,
        timeout,
        max_conns,
        arrivals,
        retry,
    } = shape;
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
            let rng = match arrivals {
                Arrivals::Poisson { seed } => AtomicU64::new(seed.max(1)),
                Arrivals::Even => AtomicU64::new(1),
            };
            let mut offset = Duration::ZERO;
            for i in 0..MAX_OPEN_LOOP_REQUESTS {
                if i > 0 {
                    offset += match arrivals {
                        Arrivals::Even => interval,
                        Arrivals::Poisson { .. } => {
                            Duration::from_secs_f64(wipgate_e2e::rng::exponential_s(&rng, rate))
                        }
                    };
                }
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
                let task = handle.spawn(attempts(pool, spec, group, start, due, timeout, retry));
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
        if let Ok((recs, overflows)) = task.await {
            run.recs.extend(recs);
            run.gen_overflow += overflows;
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
    closed_loop_each(addr, conns, duration, |_| spec.clone()).await
}

/// [`closed_loop`] with connection `k` sending `spec_of(k)`.
pub async fn closed_loop_each(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    spec_of: impl Fn(usize) -> RequestSpec,
) -> ClosedLoopRun {
    let end = Instant::now() + duration;
    let mut set = JoinSet::new();
    for k in 0..conns.max(1) {
        let spec = spec_of(k);
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
