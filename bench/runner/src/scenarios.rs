//! The scenarios' shared parts (timing, Envoy per setup, warm-up, turning an open loop
//! into figures) and the two scenarios that are not about bottleneck shapes: overhead on an
//! unconstrained upstream, and a noisy tenant. The shapes are in `sweeps.rs` (every setup at
//! multiples of capacity) and `timelines.rs` (runs traced over time).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use wipgate_e2e::{wait_until_async, Envoy, RequestSpec, Slowdown, Upstream, UpstreamStats};

use crate::gen::{self, Arrivals, Kind, OpenLoop, OpenLoopRun};
use crate::results::{
    Generator, Noisy, NoisySetup, Overhead, OverheadSetup, Point, TenantResult, Timeline,
};
use crate::setup::{Setup, Shape, Wasm};
use crate::trace::{bucket_means, Samples};

/// How long each part runs; `quick` shortens everything for a smoke run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// One closed-loop throughput measurement.
    pub closed: Duration,
    /// Closed-loop repetitions per setup (interleaved; the median counts).
    pub closed_reps: usize,
    /// One fixed-rate latency measurement.
    pub fixed: Duration,
    /// Fixed-rate repetitions per setup (interleaved; latencies pooled).
    pub fixed_reps: usize,
    /// One point of a sweep, and the noisy-tenant run.
    pub point: Duration,
    /// The client gives up on a request this long after its intended send time.
    pub client_timeout: Duration,
    /// The offered loads of a sweep, as multiples of capacity.
    pub multipliers: &'static [f64],
    /// The capacity shift's whole run ...
    pub shift_run: Duration,
    /// ... the service time doubles here ...
    pub shift_from: Duration,
    /// ... and returns here.
    pub shift_to: Duration,
    /// The steady-overload run.
    pub steady_run: Duration,
    /// The cold-start run.
    pub cold_run: Duration,
    /// One pgbench run.
    pub pgbench_run: Duration,
    /// pgbench's client counts.
    pub pgbench_clients: &'static [usize],
    /// The bounded wait's hand-off measurement, each of its two runs.
    pub handoff_run: Duration,
    /// The bounded wait under retrying clients: how long first attempts arrive ...
    pub retry_run: Duration,
    /// ... and how much longer retries may come.
    pub retry_tail: Duration,
}

impl Timing {
    /// The full run, or a short smoke run.
    #[must_use]
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                closed: Duration::from_secs(1),
                closed_reps: 1,
                fixed: Duration::from_secs(1),
                fixed_reps: 1,
                point: Duration::from_millis(1500),
                client_timeout: Duration::from_secs(1),
                multipliers: &[0.5, 3.0],
                shift_run: Duration::from_secs(6),
                shift_from: Duration::from_secs(2),
                shift_to: Duration::from_secs(4),
                steady_run: Duration::from_secs(3),
                cold_run: Duration::from_secs(2),
                pgbench_run: Duration::from_secs(1),
                pgbench_clients: &[1, 4, 16],
                handoff_run: Duration::from_secs(1),
                retry_run: Duration::from_secs(3),
                retry_tail: Duration::from_secs(2),
            }
        } else {
            Self {
                closed: Duration::from_secs(3),
                closed_reps: 3,
                fixed: Duration::from_secs(4),
                fixed_reps: 2,
                point: Duration::from_secs(5),
                client_timeout: Duration::from_secs(2),
                multipliers: &MULTIPLIERS,
                shift_run: Duration::from_secs(25),
                shift_from: Duration::from_secs(8),
                shift_to: Duration::from_secs(16),
                steady_run: Duration::from_secs(20),
                cold_run: Duration::from_secs(10),
                pgbench_run: Duration::from_secs(5),
                pgbench_clients: &[1, 2, 4, 8, 16, 32, 64],
                handoff_run: Duration::from_secs(3),
                retry_run: Duration::from_secs(15),
                retry_tail: Duration::from_secs(10),
            }
        }
    }
}

/// Keep-alive connections of the closed loop.
pub const CLOSED_CONNS: usize = 32;
/// The open loop's cap on connections open at once.
pub const MAX_GEN_CONNS: usize = 6_000;
/// Width of a time-series bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Offered load as multiples of the bottleneck's capacity.
pub const MULTIPLIERS: [f64; 6] = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0];

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration in milliseconds.
#[must_use]
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A fresh Envoy for `setup` in front of `upstream`.
pub fn start_envoy(setup: &Setup, upstream: SocketAddr, wasm: &Wasm, name: &str) -> Result<Envoy> {
    Envoy::start(&setup.envoy_config(upstream, wasm))
        .with_context(|| format!("starting Envoy for {name}"))
}

/// wipgate's configuration in the overhead scenario: a limit it never reaches.
pub const WIPGATE_UNLIMITED: &str = r#"{"max_inflight": 100000}"#;

/// Overhead: bare Envoy, Envoy + pass-through wasm, Envoy + wipgate, in front of an
/// unconstrained upstream; closed-loop throughput, then latency at a fixed rate.
pub async fn overhead(wasm: &Wasm, timing: Timing) -> Result<Overhead> {
    let upstream = Upstream::start_default()?;
    let spec = RequestSpec::get("/");
    eprintln!("overhead: generator ceiling (straight to the upstream, no Envoy)");
    let ceiling = gen::closed_loop(upstream.addr(), CLOSED_CONNS, timing.closed, &spec).await;
    let setups = [
        ("bare Envoy", Setup::Bare),
        ("Envoy + pass-through wasm", Setup::Passthrough),
        (
            "Envoy + wipgate",
            Setup::Wipgate(WIPGATE_UNLIMITED.to_owned()),
        ),
    ];
    let mut envoys = Vec::new();
    for (name, setup) in &setups {
        envoys.push(start_envoy(setup, upstream.addr(), wasm, name)?);
    }
    // Warm up every path (V8 tiers, connection pools) before measuring.
    for envoy in &envoys {
        let _ = gen::closed_loop(
            envoy.listener_addr(),
            CLOSED_CONNS,
            Duration::from_millis(500),
            &spec,
        )
        .await;
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut closed_errors = vec![0usize; setups.len()];
    for rep in 0..timing.closed_reps {
        for (i, envoy) in envoys.iter().enumerate() {
            eprintln!("overhead: closed loop {} (rep {})", setups[i].0, rep + 1);
            let run =
                gen::closed_loop(envoy.listener_addr(), CLOSED_CONNS, timing.closed, &spec).await;
            rps[i].push(run.rps);
            closed_errors[i] += run.errors;
        }
    }
    let medians: Vec<f64> = rps.iter().map(|v| median(v)).collect();
    // The fixed rate: a fifth of the slowest path's maximum, in whole hundreds.
    let slowest = medians.iter().copied().fold(f64::INFINITY, f64::min);
    let fixed_rate = ((slowest / 5.0 / 100.0).floor() * 100.0).max(100.0);
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); setups.len()];
    let mut rtts: Vec<Vec<Duration>> = vec![Vec::new(); setups.len()];
    let mut gens: Vec<Vec<Generator>> = vec![Vec::new(); setups.len()];
    let mut fixed_failed = vec![0usize; setups.len()];
    for rep in 0..timing.fixed_reps {
        for (i, envoy) in envoys.iter().enumerate() {
            eprintln!(
                "overhead: {fixed_rate} req/s open loop {} (rep {})",
                setups[i].0,
                rep + 1
            );
            let one = spec.clone();
            let run = gen::open_loop(
                envoy.listener_addr(),
                fixed_rate,
                timing.fixed,
                timing.client_timeout,
                MAX_GEN_CONNS,
                move |_| (one.clone(), 0),
            )
            .await;
            for r in &run.recs {
                if r.kind == Kind::Ok {
                    latencies[i].push(r.latency);
                    rtts[i].push(r.rtt);
                } else {
                    fixed_failed[i] += 1;
                }
            }
            gens[i].push(generator(&run));
        }
    }
    drop(envoys);
    let rows: Vec<OverheadSetup> = setups
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let l = &latencies[i];
            OverheadSetup {
                name: (*name).to_owned(),
                rps_runs: rps[i].clone(),
                rps: medians[i],
                closed_errors: closed_errors[i],
                p50_us: us(gen::percentile(l, 50.0)),
                p99_us: us(gen::percentile(l, 99.0)),
                p999_us: us(gen::percentile(l, 99.9)),
                rtt_p50_us: us(gen::percentile(&rtts[i], 50.0)),
                rtt_p99_us: us(gen::percentile(&rtts[i], 99.0)),
                fixed_count: l.len(),
                fixed_failed: fixed_failed[i],
                generator: gens[i].clone(),
            }
        })
        .collect();
    Ok(Overhead {
        closed_conns: CLOSED_CONNS,
        closed_s: timing.closed.as_secs_f64(),
        closed_reps: timing.closed_reps,
        fixed_rate,
        fixed_s: timing.fixed.as_secs_f64(),
        fixed_reps: timing.fixed_reps,
        generator_ceiling_rps: ceiling.rps,
        setups: rows,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// How well the generator kept `run`'s schedule.
#[must_use]
pub fn generator(run: &OpenLoopRun) -> Generator {
    Generator {
        intended_rate: run.intended_rate,
        actual_rate: run.actual_rate,
        sent: run.recs.len(),
        lag_p99_ms: ms(run.lag_p99),
        lag_max_ms: ms(run.lag_max),
        max_conns: run.max_conns,
        overflow: run.gen_overflow,
    }
}

/// One point: an open-loop run at `mult` times `capacity` for `window`, against a
/// bottleneck that held at most `upstream_max_inflight` at once.
#[must_use]
pub fn point(
    run: &OpenLoopRun,
    capacity: f64,
    window: Duration,
    mult: f64,
    upstream_max_inflight: usize,
) -> Point {
    let ok: Vec<Duration> = lat(run, Kind::Ok, None);
    let rejected: Vec<Duration> = lat(run, Kind::Rejected, None);
    let total = run.recs.len();
    #[allow(clippy::cast_precision_loss)]
    let frac = |n: usize| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    // Answers completed while the load runs: a backlog served after it stops adds nothing.
    let goodput = goodput_between(run, Duration::ZERO, window, capacity);
    Point {
        mult,
        sent: total,
        ok: ok.len(),
        rejected: rejected.len(),
        failed: total - ok.len() - rejected.len(),
        goodput,
        ok_p50_ms: ms(gen::percentile(&ok, 50.0)),
        ok_p99_ms: ms(gen::percentile(&ok, 99.0)),
        ok_p999_ms: ms(gen::percentile(&ok, 99.9)),
        reject_rate: frac(rejected.len()),
        rej_p99_ms: ms(gen::percentile(&rejected, 99.0)),
        rej_rtt_p99_ms: ms(gen::percentile(&rtt(run, Kind::Rejected), 99.0)),
        generator: generator(run),
        upstream_max_inflight,
    }
}

fn rtt(run: &OpenLoopRun, kind: Kind) -> Vec<Duration> {
    run.recs
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.rtt)
        .collect()
}

fn lat(run: &OpenLoopRun, kind: Kind, group: Option<usize>) -> Vec<Duration> {
    run.recs
        .iter()
        .filter(|r| r.kind == kind && group.map_or(true, |g| r.group == g))
        .map(|r| r.latency)
        .collect()
}

/// 2xx answers completed in `[from, to)` of `run`, per second, as a fraction of `capacity`.
#[must_use]
pub fn goodput_between(run: &OpenLoopRun, from: Duration, to: Duration, capacity: f64) -> f64 {
    let n = run
        .recs
        .iter()
        .filter(|r| r.kind == Kind::Ok && (from..to).contains(&(r.due + r.latency)))
        .count();
    let span = to.saturating_sub(from).as_secs_f64();
    if span <= 0.0 || capacity <= 0.0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let g = n as f64 / span / capacity;
    g
}

/// `run` over `span` in buckets: goodput by completion time (a fraction of `capacity`),
/// rejections by send time, the bottleneck's mean in-flight, and the limit's samples.
#[must_use]
pub fn timeline(
    run: &OpenLoopRun,
    capacity: f64,
    span: Duration,
    inflight: &Samples,
    limit: &Samples,
) -> Timeline {
    let bucket = BUCKET.as_secs_f64();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (span.as_secs_f64() / bucket).ceil() as usize;
    let bucket_of = |d: Duration| {
        #[allow(clippy::cast_possible_truncation)]
        let b = (d.as_nanos() / BUCKET.as_nanos()) as usize;
        b
    };
    let mut done_ok = vec![0usize; n];
    let mut rejected = vec![0usize; n];
    for r in &run.recs {
        match r.kind {
            Kind::Ok => {
                if let Some(b) = done_ok.get_mut(bucket_of(r.due + r.latency)) {
                    *b += 1;
                }
            }
            Kind::Rejected => {
                if let Some(b) = rejected.get_mut(bucket_of(r.due)) {
                    *b += 1;
                }
            }
            Kind::Failed => {}
        }
    }
    let per_s = 1.0 / bucket;
    let ok = run.recs.iter().filter(|r| r.kind == Kind::Ok).count();
    let rej = run.recs.iter().filter(|r| r.kind == Kind::Rejected).count();
    #[allow(clippy::cast_precision_loss)]
    Timeline {
        sent: run.recs.len(),
        ok,
        rejected: rej,
        failed: run.recs.len() - ok - rej,
        generator: generator(run),
        t: (0..n).map(|i| i as f64 * bucket).collect(),
        goodput: done_ok
            .iter()
            .map(|&c| c as f64 * per_s / capacity)
            .collect(),
        rejected_per_s: rejected.iter().map(|&c| c as f64 * per_s).collect(),
        inflight: bucket_means(inflight, bucket, n),
        limit_t: limit.iter().map(|&(t, _)| t).collect(),
        limit: limit.iter().map(|&(_, v)| v).collect(),
    }
}

/// The warm-up's load, as a multiple of capacity: normal operation, no overload.
pub const WARM_LOAD: f64 = 0.5;
/// The warm-up's length: three of wipgate's default adaptive windows (500 ms), and far more
/// than adaptive_concurrency's 50-request minimum-RTT measurement.
pub const WARM: Duration = Duration::from_millis(1500);

/// Before a measured run: half the bottleneck's `capacity` for 1.5 s (V8 compiles the paths
/// it takes, Envoy opens its upstream connections, adaptive_concurrency measures its minimum
/// RTT, and the adaptive limits learn the bottleneck at normal load, as a proxy in service
/// has when overload arrives; the cold start has a run of its own), then up to 10 s for the
/// upstream to drain, and its gauges reset.
pub async fn warm_up(envoy: &Envoy, stats: &UpstreamStats, capacity: f64) {
    let _ = gen::open_loop(
        envoy.listener_addr(),
        capacity * WARM_LOAD,
        WARM,
        Duration::from_secs(2),
        MAX_GEN_CONNS,
        |_| (RequestSpec::get("/"), 0),
    )
    .await;
    // Still busy after 10 s: measured all the same, the figures will show it.
    let _ = wait_until_async(Duration::from_secs(10), "the upstream to drain", || {
        stats.inflight() == 0
    })
    .await;
    stats.reset();
}

/// The noisy tenant and four normal ones.
pub const TENANTS: [&str; 5] = ["noisy", "t1", "t2", "t3", "t4"];
/// Each normal tenant's share of capacity; the noisy one sends ten times as much.
pub const NORMAL_SHARE: f64 = 0.1;
/// Which tenant sends request `i`: of every 14, the noisy one sends 10, each other one.
#[must_use]
pub fn tenant_of(i: usize) -> usize {
    match i % 14 {
        0 => 1,
        3 => 2,
        7 => 3,
        10 => 4,
        _ => 0,
    }
}

/// Noisy tenant: one tenant at 10x the others' rate, total 1.4x capacity, on the
/// collapsing bottleneck, in front of each of `setups`, arrivals as `arrivals`.
pub async fn noisy(
    wasm: &Wasm,
    timing: Timing,
    setups: Vec<(&'static str, Setup)>,
    arrivals: Arrivals,
) -> Result<Noisy> {
    let shape = Shape::Collapse;
    let capacity = shape.capacity_rps();
    let rate = capacity * NORMAL_SHARE * 14.0;
    let mut out = Vec::new();
    for (name, setup) in setups {
        eprintln!("noisy tenant: {name}");
        let upstream = shape.start(&Slowdown::default())?;
        let envoy = start_envoy(&setup, upstream.addr(), wasm, name)?;
        warm_up(&envoy, upstream.stats(), capacity).await;
        let run = gen::open_loop_with(
            envoy.listener_addr(),
            OpenLoop {
                rate,
                duration: timing.point,
                timeout: timing.client_timeout,
                max_conns: MAX_GEN_CONNS,
                arrivals,
                retry: None,
            },
            |i| {
                let t = tenant_of(i);
                (RequestSpec::get("/").tenant(TENANTS[t]), t)
            },
        )
        .await;
        drop(envoy);
        let tenants: Vec<TenantResult> = TENANTS
            .iter()
            .enumerate()
            .map(|(g, t)| {
                let sent = run.recs.iter().filter(|r| r.group == g).count();
                let ok = lat(&run, Kind::Ok, Some(g));
                let rejected = lat(&run, Kind::Rejected, Some(g)).len();
                #[allow(clippy::cast_precision_loss)]
                let success = if sent == 0 {
                    0.0
                } else {
                    ok.len() as f64 / sent as f64
                };
                TenantResult {
                    tenant: (*t).to_owned(),
                    sent,
                    ok: ok.len(),
                    rejected,
                    failed: sent - ok.len() - rejected,
                    success,
                    ok_p99_ms: ms(gen::percentile(&ok, 99.0)),
                }
            })
            .collect();
        out.push(NoisySetup {
            name: name.to_owned(),
            tenants,
            generator: generator(&run),
            upstream_max_inflight: upstream.max_inflight(),
            goodput: Some(goodput_between(
                &run,
                Duration::ZERO,
                timing.point,
                capacity,
            )),
        });
    }
    Ok(Noisy {
        capacity_rps: capacity,
        run_s: timing.point.as_secs_f64(),
        rate,
        normal_rate: capacity * NORMAL_SHARE,
        noisy_rate: capacity * NORMAL_SHARE * 10.0,
        setups: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noisy_tenant_sends_ten_times_each_other_ones_share() {
        let mut counts = [0usize; TENANTS.len()];
        for i in 0..14 * 100 {
            counts[tenant_of(i)] += 1;
        }
        assert_eq!(counts, [1000, 100, 100, 100, 100]);
    }
}
