//! Adaptive limits in a real Envoy in front of a real database: an upstream whose requests
//! run on PostgreSQL through a bounded pool slows down; the limit falls and admitted latency
//! recovers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wipgate_e2e::pg_upstream::PgUpstream;
use wipgate_e2e::postgres::Postgres;
use wipgate_e2e::sampler::Sampler;
use wipgate_e2e::{open_loop, require_envoy, Envoy, EnvoyConfig, Outcome, RequestSpec, Summary};

/// A real database behind a pool of four connections (10 ms of work per request, about
/// 400 requests/s), Envoy with `config` in front, and the adaptive limit traced.
struct Rig {
    _pg: Postgres,
    upstream: PgUpstream,
    envoy: Arc<Envoy>,
    tracer: Sampler<u64>,
}

impl Rig {
    async fn start(config: &serde_json::Value) -> Self {
        let pg = Postgres::start(50).unwrap();
        let upstream = PgUpstream::start(&pg.dsn(), 4, Duration::from_millis(10))
            .await
            .unwrap();
        let envoy = Arc::new(
            Envoy::start(&EnvoyConfig::new(upstream.addr()).with_filter(config.to_string()))
                .unwrap(),
        );
        let tracer = {
            let envoy = Arc::clone(&envoy);
            Sampler::start(Instant::now(), Duration::from_millis(250), move || {
                envoy.wasm_stat("wipgate.adaptive.limit")
            })
        };
        Self {
            _pg: pg,
            upstream,
            envoy,
            tracer,
        }
    }

    /// Stops tracing: (ms since start, limit) every 250 ms.
    fn trace(self) -> Vec<(u128, u64)> {
        let ms = |t: f64| (t * 1e3) as u128;
        self.tracer
            .finish()
            .into_iter()
            .map(|(t, l)| (ms(t), l))
            .collect()
    }
}

fn admitted(out: &[Outcome]) -> Summary {
    let ok: Vec<Outcome> = out.iter().filter(|o| o.is_success()).cloned().collect();
    Summary::of(&ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn aimd_limit_falls_when_the_database_slows_down() {
    require_envoy();
    let aimd = json!({"algorithm": "aimd", "window_ms": 250, "latency_target_ms": 60,
                      "stable_windows": 1, "increase": 1});
    slowdown(aimd, "aimd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn gradient_limit_falls_when_the_database_slows_down() {
    require_envoy();
    let gradient = json!({"algorithm": "gradient", "window_ms": 250, "tolerance": 1.5,
                          "smoothing": 0.5, "stable_windows": 1});
    slowdown(gradient, "gradient").await;
}

/// Healthy, then the database 4x slower: the limit must have risen, then fallen, and
/// admitted latency must stay near the database's own.
async fn slowdown(adaptive: serde_json::Value, down_reason: &str) {
    let config = json!({"max_inflight": 64, "min_inflight": 2, "adaptive": adaptive});
    let rig = Rig::start(&config).await;
    let (envoy, upstream, addr) = (
        Arc::clone(&rig.envoy),
        &rig.upstream,
        rig.envoy.listener_addr(),
    );
    let spec = |_| RequestSpec::get("/order");

    // Healthy: the limit ramps up from min_inflight while demand presses on it.
    let healthy = open_loop(addr, 300.0, Duration::from_secs(3), spec).await;
    // The database slows down 4x (40 ms per request, ~100 requests/s for 300 offered).
    upstream.set_work(Duration::from_millis(40));
    let slowed = open_loop(addr, 300.0, Duration::from_secs(2), spec).await;
    let settled = open_loop(addr, 300.0, Duration::from_secs(4), spec).await;
    let trace = rig.trace();

    let (h, s, t) = (admitted(&healthy), admitted(&slowed), admitted(&settled));
    eprintln!("{down_reason}: limit trace (ms, limit): {trace:?}");
    eprintln!("healthy (10 ms work): admitted {h}");
    eprintln!("just slowed (40 ms work): admitted {s}");
    eprintln!(
        "settled (40 ms work): admitted {t}; all {}",
        Summary::of(&settled)
    );

    let peak_healthy = trace
        .iter()
        .filter(|(ms, _)| *ms < 3_000)
        .map(|(_, l)| *l)
        .max()
        .unwrap();
    let last = trace.iter().rev().take(8).map(|(_, l)| *l).max().unwrap();
    assert!(
        peak_healthy > 2,
        "the limit never rose from the cold start: {trace:?}"
    );
    assert!(last < peak_healthy, "the limit did not fall: {trace:?}");
    // With at most ~4-5 in flight the pool hardly queues: near the 40 ms of work, far from
    // the hundreds of ms a queue of 64 would make.
    assert!(
        t.p50 <= Duration::from_millis(120),
        "admitted latency did not recover: {t}"
    );
    assert!(t.count > 0 && Summary::of(&settled).by_reason.contains_key("wip_limit"));
    let reasons: Vec<(&str, u64)> = ["cold_start", "increase", "latency", "errors", "gradient"]
        .into_iter()
        .map(|r| {
            (
                r,
                envoy
                    .wasm_stat(&format!("wipgate.adaptive.reason.{r}"))
                    .unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        reasons.iter().map(|(_, v)| v).sum::<u64>(),
        1,
        "one reason gauge set: {reasons:?}"
    );
    let down = if down_reason == "aimd" {
        "latency"
    } else {
        "gradient"
    };
    let last_down = envoy
        .wasm_stat(&format!("wipgate.adaptive.reason.{down}"))
        .unwrap_or(0)
        + envoy
            .wasm_stat("wipgate.adaptive.reason.increase")
            .unwrap_or(0);
    assert_eq!(
        last_down, 1,
        "{down_reason} moved the limit last: {reasons:?}"
    );
    assert!(
        envoy
            .wasm_stat("wipgate.adaptive.latency_p50_us")
            .unwrap_or(0)
            > 0
    );
}

/// The default adaptive limit (`"adaptive": {}`, the knee), not told the pool's size: light
/// load passes untouched from the cold start; under overload the limit settles near the
/// pool's knee (4 connections) and admitted latency stays near the database's own; when every
/// query gets 4x slower, the knee counted in flight stays where it was, so the limit does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn default_knee_settles_near_the_pool_and_follows_a_slower_database() {
    require_envoy();
    let rig = Rig::start(&json!({"max_inflight": 64, "adaptive": {}})).await;
    let (envoy, upstream, addr) = (
        Arc::clone(&rig.envoy),
        &rig.upstream,
        rig.envoy.listener_addr(),
    );
    let spec = |_| RequestSpec::get("/order");

    let light = open_loop(addr, 150.0, Duration::from_secs(2), spec).await;
    let flood = open_loop(addr, 800.0, Duration::from_secs(5), spec).await;
    let at_knee = open_loop(addr, 800.0, Duration::from_secs(3), spec).await;
    upstream.set_work(Duration::from_millis(40));
    let slowed = open_loop(addr, 300.0, Duration::from_secs(5), spec).await;
    let trace = rig.trace();

    let (l, k, s) = (Summary::of(&light), admitted(&at_knee), admitted(&slowed));
    eprintln!("knee: limit trace (ms, limit): {trace:?}");
    eprintln!("light (150/s): all {l}");
    eprintln!("flood (800/s): all {}", Summary::of(&flood));
    eprintln!(
        "at the knee (800/s): admitted {k}; all {}",
        Summary::of(&at_knee)
    );
    eprintln!(
        "4x slower (300/s): admitted {s}; all {}",
        Summary::of(&slowed)
    );
    let stat = |name: &str| {
        envoy
            .wasm_stat(&format!("wipgate.adaptive.{name}"))
            .unwrap_or(0)
    };
    eprintln!(
        "estimates: no-load {} us, delivered {}/s, knee {}",
        stat("no_load_latency_us"),
        stat("delivery_rate_per_s"),
        stat("knee_estimate")
    );

    assert!(
        l.by_reason.is_empty() && l.status(200) == l.count,
        "light load turned away from the cold start on: {l}"
    );
    // The knee of a pool of 4 behind an HTTP hop: a few in flight, far below the 64 allowed.
    let window = |from: u128, to: u128| -> Vec<u64> {
        trace
            .iter()
            .filter(|(ms, _)| (from..to).contains(ms))
            .map(|(_, l)| *l)
            .collect()
    };
    let mut settled = window(5_000, 10_000);
    settled.sort_unstable();
    // The pool is 4; Envoy, the upstream's HTTP hop and the load generator share 2 cores,
    // so the knee counted at Envoy is somewhat higher. A queue of 64 would mean ~700 ms.
    assert!(
        settled.iter().all(|l| (1..=16).contains(l))
            && (3..=16).contains(&settled[settled.len() / 2]),
        "the limit did not settle near the knee: {trace:?}"
    );
    assert!(
        k.p50 <= l.p50 * 4,
        "admitted latency queued at the knee: {k} (light load: {l})"
    );
    // Each query 4x slower, the pool still 4: the limit stays near the knee, and admitted
    // requests wait little beyond the 40 ms of work (a queue of 64 would be ~2.5 s).
    let slower = window(13_000, 15_000);
    assert!(
        slower.iter().all(|l| (1..=16).contains(l)),
        "the limit left the knee when the database slowed down: {trace:?}"
    );
    assert!(
        s.p50 <= Duration::from_millis(200),
        "admitted latency queued after the slowdown: {s}"
    );
    assert!(stat("no_load_latency_us") > 0 && stat("delivery_rate_per_s") > 0);
    assert!(stat("knee_estimate") >= 2);
}
