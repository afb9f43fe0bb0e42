//! The bounded wait (issue 14) side by side with Envoy's circuit breaker, whose pending queue
//! is its only built-in wait, wipgate static without the wait (the baseline) and wipgate
//! static and adaptive with it: Poisson arrivals at multiples of capacity (the sweep's loop,
//! `sweeps::sweep`), a noisy tenant with no `tenants` configuration (`scenarios::noisy`), the
//! hand-off between workers seen from the upstream, and clients that honour `retry-after`
//! under sustained overload.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wipgate_e2e::{Envoy, RequestSpec, Span, Upstream, UpstreamOptions};

use crate::gen::{self, Arrivals, Kind, OpenLoop, OpenLoopRun, Retry};
use crate::results::{Gaps, Handoff, QueueBench, QueueSetup, RetryAfter, RetrySetup};
use crate::scenarios::{self, generator, start_envoy, warm_up, Timing, MAX_GEN_CONNS};
use crate::setup::{self, Setup, Shape, Wasm};
use crate::sweeps::{self, Plan, Spec};

/// The Poisson arrivals' seed: every setup at one load gets the same schedule.
pub const SEED: u64 = 0x0014_5eed;
/// The bottleneck of the whole section: the collapsing one, where admitting past C hurts.
pub const SHAPE: Shape = Shape::Collapse;
/// Hand-off: the upstream's service time (short, for many gaps per second) ...
pub const HANDOFF_SERVICE: Duration = Duration::from_millis(2);
/// ... the closed-loop connections, spread over the two workers by `exact_balance`, at a
/// limit of 1: one in service, three waiting ...
pub const HANDOFF_CONNS: usize = 4;
/// ... and a wait long enough that none of them times out.
pub const HANDOFF_TIMEOUT_MS: u64 = 1_000;
/// Retrying clients: first attempts at this multiple of capacity ...
pub const RETRY_MULT: f64 = 3.0;
/// ... each retried at most this many times after its `retry-after` ...
pub const MAX_RETRIES: u32 = 3;
/// ... counted in buckets of this length.
pub const RETRY_BUCKET: Duration = Duration::from_secs(1);

/// The whole section.
pub async fn run(wasm: &Wasm, timing: Timing, quick: bool) -> Result<QueueBench> {
    let started = Instant::now();
    let capacity = SHAPE.capacity_rps();
    let timeout_ms = setup::QUEUE_TIMEOUT_MS;
    let setups = setup::queue_setups(setup::KNEE, capacity, timeout_ms);
    let described: Vec<QueueSetup> = setups
        .iter()
        .map(|(name, setup)| QueueSetup {
            name: (*name).to_owned(),
            config: describe(setup),
        })
        .collect();
    let service_ms = measured_service(timing).await?;
    let mut with_baseline = vec![(setup::NO_PROTECTION, Setup::Bare)];
    with_baseline.extend(setups.iter().cloned());
    let spec = Spec {
        key: "queue_poisson",
        title: "Poisson arrivals",
        bottleneck: SHAPE.bottleneck(),
        capacity,
        c: setup::KNEE,
    };
    let plan = Plan {
        setups: with_baseline,
        wipgate_static: setup::wipgate_static(setup::KNEE),
        multipliers: timing.multipliers,
        // No protection only where it gives the unloaded p99.
        runs: |name, mult| name != setup::NO_PROTECTION || (mult - UNLOADED).abs() < 1e-9,
        arrivals: Arrivals::Poisson { seed: SEED },
    };
    let poisson =
        sweeps::sweep(wasm, timing, spec, plan, &mut sweeps::fresh_upstream(SHAPE)).await?;
    let noisy = scenarios::noisy(
        wasm,
        timing,
        setups.clone(),
        Arrivals::Poisson { seed: SEED },
    )
    .await?;
    let handoff = handoff(wasm, timing).await?;
    let retrying: Vec<(&'static str, Setup)> = setups
        .into_iter()
        .filter(|(name, _)| {
            [setup::WIPGATE_STATIC_QUEUE, setup::WIPGATE_ADAPTIVE_QUEUE].contains(name)
        })
        .collect();
    let retry = retry_after(wasm, timing, retrying).await?;
    Ok(QueueBench {
        machine: crate::report::machine(),
        runner_wall_s: started.elapsed().as_secs_f64(),
        quick,
        timeout_ms,
        setups: described,
        seed: SEED,
        service_ms,
        poisson,
        noisy,
        handoff,
        retry,
    })
}

/// The load whose no-protection p99 is the unloaded p99.
pub const UNLOADED: f64 = 0.5;

/// Half the knee in flight, straight to a fresh upstream of `SHAPE` (no proxy) for a
/// second: the mean time the upstream holds a request, in ms.
async fn measured_service(timing: Timing) -> Result<f64> {
    let upstream = SHAPE.start(&wipgate_e2e::Slowdown::default())?;
    let spec = RequestSpec::get("/");
    upstream.stats().record_spans();
    let _ = gen::closed_loop(upstream.addr(), setup::KNEE / 2, timing.handoff_run, &spec).await;
    let spans = upstream.stats().take_spans();
    let held: Vec<f64> = spans
        .iter()
        .map(|s| scenarios::ms(s.end.saturating_duration_since(s.start)))
        .collect();
    Ok(crate::analysis::mean(&held))
}

/// What a setup runs, for the report.
fn describe(setup: &Setup) -> String {
    match setup {
        Setup::Wipgate(config) => config.clone(),
        Setup::CircuitBreakerPending {
            c,
            pending,
            route_timeout,
        } => format!(
            "max_connections = max_requests = {c}, max_pending_requests = {pending}; route timeout {} ms",
            route_timeout.as_millis()
        ),
        other => format!("{other:?}"),
    }
}

/// The upstream's idle gaps at a limit of 1, split by whether the next request came from a
/// client on the same Envoy worker as the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapSplit {
    /// Next request from the other worker.
    pub cross: Vec<Duration>,
    /// From the same worker.
    pub same: Vec<Duration>,
    /// The groups the clients fall into (one per worker when every worker's clients shared an
    /// upstream connection at least once).
    pub groups: usize,
    /// Gaps whose next request came on an upstream connection not seen before (Envoy opened
    /// it for that request).
    pub new_conn: usize,
}

/// Which clients (`x-tag`) share a worker: an upstream connection belongs to one Envoy
/// worker, so clients whose requests came on one connection are on one worker. Returns
/// each tag's group and the number of groups.
fn worker_groups(spans: &[Span]) -> (std::collections::BTreeMap<u64, usize>, usize) {
    let mut tags: Vec<u64> = spans.iter().map(|s| s.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    let index = |t: u64| tags.binary_search(&t).unwrap_or(0);
    // Union-find over the tags; each union joins two roots, so the loops are bounded by the
    // number of tags.
    let mut parent: Vec<usize> = (0..tags.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_on_conn = std::collections::BTreeMap::new();
    for s in spans {
        let t = index(s.tag);
        let other = *first_on_conn.entry(s.conn).or_insert(t);
        let (a, b) = (root(&mut parent, t), root(&mut parent, other));
        parent[a] = b;
    }
    let mut groups = std::collections::BTreeMap::new();
    let mut roots = std::collections::BTreeMap::new();
    for (i, &t) in tags.iter().enumerate() {
        let r = root(&mut parent, i);
        let next = roots.len();
        groups.insert(t, *roots.entry(r).or_insert(next));
    }
    (groups, roots.len())
}

/// Gaps of the upstream between one request's end and the next one's start, for requests
/// that did not overlap (at a limit of 1, none do).
#[must_use]
pub fn gaps(spans: &[Span]) -> GapSplit {
    let mut sorted = spans.to_vec();
    sorted.sort_by_key(|s| s.start);
    let (group, groups) = worker_groups(&sorted);
    let mut out = GapSplit {
        groups,
        ..GapSplit::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    if let Some(first) = sorted.first() {
        seen.insert(first.conn);
    }
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        let new_conn = seen.insert(b.conn);
        if b.start < a.end {
            continue;
        }
        let gap = b.start - a.end;
        out.new_conn += usize::from(new_conn);
        if group.get(&a.tag) == group.get(&b.tag) {
            out.same.push(gap);
        } else {
            out.cross.push(gap);
        }
    }
    out
}

/// The distribution of `v`.
#[must_use]
pub fn distribution(v: &[Duration]) -> Gaps {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Gaps {
        count: v.len(),
        p50_us: us(gen::percentile(v, 50.0)),
        p99_us: us(gen::percentile(v, 99.0)),
        max_us: us(v.iter().copied().max().unwrap_or_default()),
    }
}

/// What the upstream saw of one closed loop through wipgate.
struct Through {
    spans: Vec<Span>,
    /// Answers other than 2xx (a rejection would make a gap the client's, not a hand-off).
    errors: usize,
    /// wipgate's `queue.handoffs` over the measured run.
    handoffs: Option<u64>,
}

/// A closed loop of `conns` through wipgate with `config` (two workers, `exact_balance`) in
/// front of `upstream`, after a short warm-up.
async fn through(
    wasm: &Wasm,
    upstream: &Upstream,
    config: &str,
    conns: usize,
    run: Duration,
) -> Result<Through> {
    let mut cfg = Setup::Wipgate(config.to_owned()).envoy_config(upstream.addr(), wasm);
    cfg.exact_balance = true;
    let envoy = Envoy::start(&cfg).context("starting Envoy for the hand-off")?;
    let spec = RequestSpec::get("/");
    let _ = gen::closed_loop(
        envoy.listener_addr(),
        conns,
        Duration::from_millis(500),
        &spec,
    )
    .await;
    let stat = "wipgate.queue.handoffs";
    let before = envoy.wasm_stat(stat).unwrap_or(0);
    upstream.stats().record_spans();
    let looped = gen::closed_loop_each(envoy.listener_addr(), conns, run, |k| {
        RequestSpec::get("/").header("x-tag", (k + 1).to_string())
    })
    .await;
    let spans = upstream.stats().take_spans();
    Ok(Through {
        spans,
        errors: looped.errors,
        handoffs: envoy
            .wasm_stat(stat)
            .map(|after| after.saturating_sub(before)),
    })
}

/// The hand-off seen from the upstream: at a limit of 1 with a standing queue, the idle gap
/// between one request's end and the next one's start; without a queue and one client, the
/// same gap is the path's own cost (answer out to the client, next request in).
async fn handoff(wasm: &Wasm, timing: Timing) -> Result<Handoff> {
    eprintln!("queue: hand-off between workers");
    let upstream = Upstream::start(UpstreamOptions {
        service_time: HANDOFF_SERVICE,
        ..UpstreamOptions::default()
    })?;
    let queue_config = serde_json::json!({
        "max_inflight": 1,
        "queue": {"timeout_ms": HANDOFF_TIMEOUT_MS}
    })
    .to_string();
    let baseline_config = setup::wipgate_static(1);
    let with_queue = through(
        wasm,
        &upstream,
        &queue_config,
        HANDOFF_CONNS,
        timing.handoff_run,
    )
    .await?;
    let without = through(wasm, &upstream, &baseline_config, 1, timing.handoff_run).await?;
    let split = gaps(&with_queue.spans);
    let base = gaps(&without.spans);
    let baseline: Vec<Duration> = base.cross.into_iter().chain(base.same).collect();
    Ok(Handoff {
        workers: wipgate_e2e::EnvoyConfig::new(upstream.addr()).concurrency,
        service_ms: scenarios::ms(HANDOFF_SERVICE),
        conns: HANDOFF_CONNS,
        run_s: timing.handoff_run.as_secs_f64(),
        queue_config,
        baseline_config,
        errors: with_queue.errors + without.errors,
        handoffs: with_queue.handoffs,
        worker_groups: split.groups,
        new_conn: split.new_conn,
        cross_worker: distribution(&split.cross),
        same_worker: distribution(&split.same),
        baseline: distribution(&baseline),
    })
}

/// Counts per bucket of `bucket` over `n` buckets, as rates per second: the records
/// `select`ed, by the time `at` gives.
fn per_s(
    run: &OpenLoopRun,
    bucket: Duration,
    n: usize,
    select: impl Fn(&gen::Rec) -> Option<Duration>,
) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    for r in &run.recs {
        let Some(at) = select(r) else { continue };
        #[allow(clippy::cast_possible_truncation)]
        let b = (at.as_nanos() / bucket.as_nanos().max(1)) as usize;
        if let Some(c) = counts.get_mut(b) {
            *c += 1;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    counts
        .iter()
        .map(|&c| c as f64 / bucket.as_secs_f64())
        .collect()
}

/// One retrying run's figures.
#[must_use]
pub fn retry_setup(
    name: &str,
    run: &OpenLoopRun,
    capacity: f64,
    span: Duration,
    max_retries: u32,
) -> RetrySetup {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (span.as_secs_f64() / RETRY_BUCKET.as_secs_f64()).ceil() as usize;
    let fresh_per_s = per_s(run, RETRY_BUCKET, n, |r| (r.attempt == 0).then_some(r.due));
    let retries_per_s = per_s(run, RETRY_BUCKET, n, |r| (r.attempt > 0).then_some(r.due));
    let ok_per_s = per_s(run, RETRY_BUCKET, n, |r| {
        (r.kind == Kind::Ok).then_some(r.due + r.latency)
    });
    let count = |f: &dyn Fn(&gen::Rec) -> bool| run.recs.iter().filter(|r| f(r)).count();
    let mut retry_after: Vec<Duration> = run.recs.iter().filter_map(|r| r.retry_after).collect();
    retry_after.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    RetrySetup {
        name: name.to_owned(),
        fresh: count(&|r| r.attempt == 0),
        retries: count(&|r| r.attempt > 0),
        ok: count(&|r| r.kind == Kind::Ok),
        rejected: count(&|r| r.kind == Kind::Rejected),
        failed: count(&|r| r.kind == Kind::Failed),
        exhausted: count(&|r| r.kind == Kind::Rejected && r.attempt >= max_retries),
        past_window: count(&|r| {
            r.kind == Kind::Rejected
                && r.attempt < max_retries
                && r.retry_after
                    .is_some_and(|after| r.due + r.latency + after > span)
        }),
        retry_after_p50_s: gen::percentile(&retry_after, 50.0).as_secs_f64(),
        retry_after_max_s: retry_after
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        t: (0..n)
            .map(|i| i as f64 * RETRY_BUCKET.as_secs_f64())
            .collect(),
        spare_per_s: ok_per_s
            .iter()
            .map(|&ok| (capacity - ok).max(0.0))
            .collect(),
        fresh_per_s,
        retries_per_s,
        ok_per_s,
        generator: generator(run),
    }
}

/// Sustained overload (first attempts at `RETRY_MULT` x capacity, Poisson) from clients
/// that honour `retry-after`, in front of each of `setups`.
async fn retry_after(
    wasm: &Wasm,
    timing: Timing,
    setups: Vec<(&'static str, Setup)>,
) -> Result<RetryAfter> {
    let capacity = SHAPE.capacity_rps();
    let until = timing.retry_run + timing.retry_tail;
    let mut out = Vec::new();
    for (name, setup) in setups {
        eprintln!("queue: retrying clients, {name}");
        let upstream = SHAPE.start(&wipgate_e2e::Slowdown::default())?;
        let envoy = start_envoy(&setup, upstream.addr(), wasm, name)?;
        warm_up(&envoy, upstream.stats(), capacity).await;
        let run = gen::open_loop_with(
            envoy.listener_addr(),
            OpenLoop {
                rate: capacity * RETRY_MULT,
                duration: timing.retry_run,
                timeout: timing.client_timeout,
                max_conns: MAX_GEN_CONNS,
                arrivals: Arrivals::Poisson { seed: SEED },
                retry: Some(Retry {
                    max_retries: MAX_RETRIES,
                    until,
                }),
            },
            |_| (RequestSpec::get("/"), 0),
        )
        .await;
        drop(envoy);
        out.push(retry_setup(name, &run, capacity, until, MAX_RETRIES));
    }
    Ok(RetryAfter {
        capacity_rps: capacity,
        mult: RETRY_MULT,
        run_s: timing.retry_run.as_secs_f64(),
        until_s: until.as_secs_f64(),
        max_retries: MAX_RETRIES,
        bucket_s: RETRY_BUCKET.as_secs_f64(),
        setups: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(conn: u64, tag: u64, start_ms: u64, end_ms: u64, t0: Instant) -> Span {
        Span {
            conn,
            tag,
            start: t0 + Duration::from_millis(start_ms),
            end: t0 + Duration::from_millis(end_ms),
        }
    }

    #[test]
    fn gaps_are_split_by_worker_and_overlaps_skipped() {
        let t0 = Instant::now();
        // Clients 1 and 2 share upstream connection 10 (one worker), 3 and 4 connection 20
        // (the other); connection 11 is a second one of the first worker. Ended out of
        // order: sorted by start first.
        let spans = [
            span(20, 3, 12, 20, t0),
            span(10, 1, 0, 10, t0),
            span(10, 2, 21, 30, t0),
            // Overlaps the previous one: no gap.
            span(20, 4, 29, 40, t0),
            span(11, 1, 43, 50, t0),
            span(10, 2, 54, 60, t0),
        ];
        let g = gaps(&spans);
        assert_eq!(g.groups, 2);
        let ms = Duration::from_millis;
        assert_eq!(g.cross, [ms(2), ms(1), ms(3)]);
        assert_eq!(g.same, [ms(4)], "client 2 after client 1: one worker");
        assert_eq!(g.new_conn, 2, "connections 20 and 11 were new");
    }

    fn rec(due_ms: u64, latency_ms: u64, kind: Kind, attempt: u32) -> gen::Rec {
        gen::Rec {
            due: Duration::from_millis(due_ms),
            latency: Duration::from_millis(latency_ms),
            rtt: Duration::ZERO,
            kind,
            group: 0,
            attempt,
            retry_after: (kind == Kind::Rejected).then_some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn retries_and_spare_capacity_are_counted_per_second() {
        let run = OpenLoopRun {
            recs: vec![
                rec(100, 10, Kind::Ok, 0),
                rec(200, 1, Kind::Rejected, 0),
                rec(1_201, 10, Kind::Ok, 1),
                rec(1_500, 600, Kind::Ok, 0),
            ],
            intended_rate: 3.0,
            actual_rate: 3.0,
            lag_p99: Duration::ZERO,
            lag_max: Duration::ZERO,
            max_conns: 1,
            gen_overflow: 0,
        };
        let s = retry_setup("x", &run, 5.0, Duration::from_secs(3), 1);
        assert_eq!((s.fresh, s.retries, s.ok, s.rejected), (3, 1, 3, 1));
        assert_eq!((s.exhausted, s.past_window), (0, 0));
        assert_eq!(s.fresh_per_s, [2.0, 1.0, 0.0]);
        assert_eq!(s.retries_per_s, [0.0, 1.0, 0.0]);
        // The last one completes at 2.1 s.
        assert_eq!(s.ok_per_s, [1.0, 1.0, 1.0]);
        assert_eq!(s.spare_per_s, [4.0, 4.0, 4.0]);
        assert!((s.retry_after_p50_s - 1.0).abs() < 1e-9);
        let s = retry_setup("x", &run, 5.0, Duration::from_millis(1_100), 1);
        assert_eq!(s.past_window, 1, "its retry at 1.201 s is past 1.1 s");
    }
}
