//! Runs traced over time, on the in-process bottlenecks: the capacity shift (the collapsing
//! bottleneck's service time doubles mid-run, then returns), steady overload (how still the
//! moving limits hold near the knee), and a cold start at half the capacity (what a fresh
//! Envoy turns away before it knows anything).

use std::time::{Duration, Instant};

use anyhow::Result;
use wipgate_e2e::client::send;
use wipgate_e2e::{Envoy, RequestSpec, Slowdown, UpstreamStats};

use crate::analysis::{mean, reversals, settled_after, share_within};
use crate::gen::{self, Kind, OpenLoopRun};
use crate::results::{ColdSetup, ColdStart, Shift, ShiftSetup, Steady, SteadySetup, Timeline};
use crate::scenarios::{
    goodput_between, start_envoy, timeline, warm_up, Timing, BUCKET, MAX_GEN_CONNS,
};
use crate::setup::{self, Setup, Shape, Wasm};
use crate::trace::Tracer;

/// "Near the knee" is within this fraction of it.
pub const BAND: f64 = 0.25;
/// The offered load of the shift and the steady overload, as a multiple of capacity.
pub const OVERLOAD: f64 = 3.0;
/// The shift's service-time multiplier.
pub const SLOWDOWN: f64 = 2.0;
/// Steady overload: the first seconds, while the limit leaves the warm-up's level, are not
/// steady.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The cold start's offered load, as a multiple of capacity.
pub const COLD_LOAD: f64 = 0.5;
/// Requests sent one at a time before the cold start's run.
pub const COLD_WARM_REQUESTS: usize = 5;

/// An open loop at `rate` for `run`, sampled: (the run, its timeline). Times count from
/// `start` (the open loop starts 5 ms later: within one in-flight sample).
#[allow(clippy::too_many_arguments)]
async fn traced(
    envoy: &Envoy,
    stats: std::sync::Arc<UpstreamStats>,
    setup: &Setup,
    start: Instant,
    rate: f64,
    run: Duration,
    timing: Timing,
    capacity: f64,
) -> (OpenLoopRun, Timeline) {
    let limit = setup.limit_stat().map(|s| (envoy.admin_addr(), s));
    let tracer = Tracer::start(start, stats, limit);
    let out = gen::open_loop(
        envoy.listener_addr(),
        rate,
        run,
        timing.client_timeout,
        MAX_GEN_CONNS,
        |_| (RequestSpec::get("/"), 0),
    )
    .await;
    let (inflight, limit) = tracer.finish();
    let line = timeline(
        &out,
        capacity,
        run + timing.client_timeout,
        &inflight,
        &limit,
    );
    (out, line)
}

/// The limit's samples taken before `until_s`.
fn limit_until(line: &Timeline, until_s: f64) -> Vec<f64> {
    line.limit_t
        .iter()
        .zip(&line.limit)
        .filter(|(&t, _)| t < until_s)
        .map(|(_, &v)| v)
        .collect()
}

/// The capacity shift on the collapsing bottleneck at 3x: the service time doubles at
/// `shift_from` and returns at `shift_to`; the knee in flight stays where it was.
pub async fn shift(wasm: &Wasm, timing: Timing, adaptive: &str) -> Result<Shift> {
    let shape = Shape::Collapse;
    let capacity = shape.capacity_rps();
    let wipgate_static = setup::wipgate_static(setup::KNEE);
    let (from, to, run_s) = (
        timing.shift_from.as_secs_f64(),
        timing.shift_to.as_secs_f64(),
        timing.shift_run.as_secs_f64(),
    );
    #[allow(clippy::cast_precision_loss)]
    let knee = setup::KNEE as f64;
    let mut out = Vec::new();
    for (name, setup) in setup::setups(setup::KNEE, &wipgate_static, adaptive) {
        eprintln!("shift: {name}");
        let slowdown = Slowdown::default();
        let upstream = shape.start(&slowdown)?;
        let envoy = start_envoy(&setup, upstream.addr(), wasm, name)?;
        warm_up(&envoy, upstream.stats(), capacity).await;
        let start = Instant::now();
        let events = {
            let (slowdown, from, to) = (slowdown.clone(), timing.shift_from, timing.shift_to);
            std::thread::spawn(move || {
                sleep_until(start + from);
                slowdown.set(SLOWDOWN);
                sleep_until(start + to);
                slowdown.set(1.0);
            })
        };
        let (run, line) = traced(
            &envoy,
            std::sync::Arc::clone(upstream.stats()),
            &setup,
            start,
            capacity * OVERLOAD,
            timing.shift_run,
            timing,
            capacity,
        )
        .await;
        let _ = events.join();
        drop(envoy);
        let limit = limit_until(&line, run_s);
        out.push(ShiftSetup {
            name: name.to_owned(),
            goodput_phases: vec![
                goodput_between(&run, Duration::ZERO, timing.shift_from, capacity),
                goodput_between(
                    &run,
                    timing.shift_from,
                    timing.shift_to,
                    capacity / SLOWDOWN,
                ),
                goodput_between(&run, timing.shift_to, timing.shift_run, capacity),
            ],
            back_after_change_s: settled_after(&line.t, &line.inflight, from, to, knee, BAND),
            back_after_recovery_s: settled_after(&line.t, &line.inflight, to, run_s, knee, BAND),
            reversals: setup.limit_stat().map(|_| reversals(&limit)),
            run: line,
        });
    }
    Ok(Shift {
        bottleneck: shape.bottleneck(),
        capacity_rps: capacity,
        knee: setup::KNEE,
        mult: OVERLOAD,
        run_s,
        slow_from_s: from,
        slow_to_s: to,
        slowdown: SLOWDOWN,
        band: BAND,
        bucket_s: BUCKET.as_secs_f64(),
        setups: out,
    })
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Steady overload at 3x on `shape`, for the setups with a moving limit.
pub async fn steady(wasm: &Wasm, timing: Timing, shape: Shape, adaptive: &str) -> Result<Steady> {
    let capacity = shape.capacity_rps();
    #[allow(clippy::cast_precision_loss)]
    let knee = setup::KNEE as f64;
    let run_s = timing.steady_run.as_secs_f64();
    let mut out = Vec::new();
    let setups = [
        (setup::ENVOY_ADAPTIVE, Setup::Adaptive),
        (setup::WIPGATE_ADAPTIVE, Setup::Wipgate(adaptive.to_owned())),
    ];
    for (name, setup) in setups {
        eprintln!("steady overload, {}: {name}", shape.key());
        let upstream = shape.start(&Slowdown::default())?;
        let envoy = start_envoy(&setup, upstream.addr(), wasm, name)?;
        warm_up(&envoy, upstream.stats(), capacity).await;
        let (run, line) = traced(
            &envoy,
            std::sync::Arc::clone(upstream.stats()),
            &setup,
            Instant::now(),
            capacity * OVERLOAD,
            timing.steady_run,
            timing,
            capacity,
        )
        .await;
        drop(envoy);
        let limit = limit_until(&line, run_s);
        let settled: Vec<f64> = line
            .limit_t
            .iter()
            .zip(&line.limit)
            .filter(|(&t, _)| t >= SETTLE.as_secs_f64() && t < run_s)
            .map(|(_, &v)| v)
            .collect();
        out.push(SteadySetup {
            name: name.to_owned(),
            goodput: goodput_between(&run, Duration::ZERO, timing.steady_run, capacity),
            within_band: share_within(&limit, knee, BAND),
            within_band_settled: share_within(&settled, knee, BAND),
            reversals: reversals(&limit),
            limit_mean: mean(&limit),
            run: line,
        });
    }
    Ok(Steady {
        key: shape.key().to_owned(),
        title: shape.title().to_owned(),
        capacity_rps: capacity,
        knee: setup::KNEE,
        mult: OVERLOAD,
        run_s,
        band: BAND,
        settle_s: SETTLE.as_secs_f64(),
        bucket_s: BUCKET.as_secs_f64(),
        setups: out,
    })
}

/// Requests sent and rejected in each whole second of `run` (by intended send time).
fn by_second(run: &OpenLoopRun, secs: usize) -> (Vec<usize>, Vec<usize>) {
    let mut sent = vec![0; secs];
    let mut rejected = vec![0; secs];
    for r in &run.recs {
        #[allow(clippy::cast_possible_truncation)]
        let s = r.due.as_secs() as usize;
        if let (Some(n), Some(j)) = (sent.get_mut(s), rejected.get_mut(s)) {
            *n += 1;
            *j += usize::from(r.kind == Kind::Rejected);
        }
    }
    (sent, rejected)
}

/// A fresh Envoy per setup in front of the collapsing bottleneck at half its capacity, after
/// only a few requests one at a time.
pub async fn cold_start(wasm: &Wasm, timing: Timing, adaptive: &str) -> Result<ColdStart> {
    let shape = Shape::Collapse;
    let capacity = shape.capacity_rps();
    let wipgate_static = setup::wipgate_static(setup::KNEE);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = timing.cold_run.as_secs_f64().ceil() as usize;
    let mut out = Vec::new();
    for (name, setup) in setup::setups(setup::KNEE, &wipgate_static, adaptive) {
        eprintln!("cold start: {name}");
        let upstream = shape.start(&Slowdown::default())?;
        let envoy = start_envoy(&setup, upstream.addr(), wasm, name)?;
        for _ in 0..COLD_WARM_REQUESTS {
            let _ = send(
                envoy.listener_addr(),
                &RequestSpec::get("/"),
                Instant::now(),
                timing.client_timeout,
            )
            .await;
        }
        let (run, line) = traced(
            &envoy,
            std::sync::Arc::clone(upstream.stats()),
            &setup,
            Instant::now(),
            capacity * COLD_LOAD,
            timing.cold_run,
            timing,
            capacity,
        )
        .await;
        drop(envoy);
        let (sent_by_second, rejected_by_second) = by_second(&run, secs);
        out.push(ColdSetup {
            name: name.to_owned(),
            sent_by_second,
            rejected_by_second,
            run: line,
        });
    }
    Ok(ColdStart {
        key: shape.key().to_owned(),
        capacity_rps: capacity,
        mult: COLD_LOAD,
        run_s: timing.cold_run.as_secs_f64(),
        warm_requests: COLD_WARM_REQUESTS,
        bucket_s: BUCKET.as_secs_f64(),
        setups: out,
    })
}
