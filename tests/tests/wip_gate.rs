//! The Envoy-wide WIP gate in a real Envoy (`--concurrency 2`, V8): the limit holds across
//! worker threads, rejections are the contract's, and every admitted request gives its slot
//! back however its stream ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use wipgate_e2e::{
    abort_mid_flight, burst, burst_with, require_envoy, wait_until, Envoy, EnvoyConfig, Outcome,
    RequestSpec, Summary, Upstream,
};

const DEADLINE: Duration = Duration::from_secs(15);

fn gate_config(max_inflight: u32) -> String {
    json!({"max_inflight": max_inflight, "retry_after_s": 2}).to_string()
}

fn start(upstream: &Upstream, max_inflight: u32) -> Envoy {
    let cfg = EnvoyConfig::new(upstream.addr()).with_filter(gate_config(max_inflight));
    Envoy::start(&cfg).expect("start Envoy with wipgate")
}

/// Asserts one rejection is exactly the contract's `503 wip_limit`.
fn assert_wip_limit_rejection(out: &Outcome, tenant: &str) {
    assert_eq!(out.status, Some(503), "{out:?}");
    assert_eq!(out.reason(), Some("wip_limit"), "{out:?}");
    assert_eq!(out.header("retry-after"), Some("2"), "{out:?}");
    assert_eq!(out.header("x-envoy-overloaded"), Some("true"), "{out:?}");
    assert_eq!(out.header("x-envoy-ratelimited"), Some("true"), "{out:?}");
    assert_eq!(
        out.header("content-type"),
        Some("application/json"),
        "{out:?}"
    );
    assert_eq!(
        out.body_json().unwrap(),
        json!({"error": "overloaded", "reason": "wip_limit", "tenant": tenant, "retry_after_s": 2})
    );
}

/// Waits until the filter's in-flight gauge and the upstream are both back at zero.
fn wait_drained(envoy: &Envoy, upstream: &Upstream) {
    wait_until(DEADLINE, "in-flight stat and upstream back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0) && upstream.inflight() == 0
    })
    .unwrap();
}

/// After whatever came before, `max_inflight` slow requests at once are all admitted:
/// no slot leaked.
async fn assert_all_slots_free(envoy: &Envoy, upstream: &Upstream, max_inflight: usize) {
    wait_drained(envoy, upstream);
    upstream.reset_stats();
    // Slow enough to be all in flight at once, quicker than any route timeout used here.
    let spec = RequestSpec::get("/again").delay_ms(150);
    let out = burst(envoy.listener_addr(), max_inflight, spec).await;
    let summary = Summary::of(&out);
    assert_eq!(summary.status(200), max_inflight, "slots leaked: {summary}");
    assert_eq!(upstream.max_inflight(), max_inflight);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn ten_times_the_limit_never_exceeds_it_at_the_upstream() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(&upstream, 10);
    let spec = |i: usize| {
        let spec = RequestSpec::get("/work").delay_ms(500);
        if i % 2 == 0 {
            spec.tenant("acme")
        } else {
            spec.header("x-tenant-id", "not a tenant!")
        }
    };
    let out = burst_with(envoy.listener_addr(), 100, spec).await;
    let summary = Summary::of(&out);
    eprintln!(
        "10x burst: {summary}; upstream max in-flight {}",
        upstream.max_inflight()
    );

    assert_eq!(summary.count, 100);
    assert!(
        upstream.max_inflight() <= 10,
        "upstream saw {}",
        upstream.max_inflight()
    );
    assert_eq!(
        upstream.max_inflight(),
        10,
        "the limit was not used: {summary}"
    );
    let admitted = summary.status(200);
    let rejected: Vec<&Outcome> = out.iter().filter(|o| o.status != Some(200)).collect();
    assert_eq!(admitted + rejected.len(), 100);
    assert!(rejected.len() >= 80, "{summary}");
    for o in &rejected {
        // A malformed tenant header falls back to the default tenant.
        let tenant = if o.tenant.as_deref() == Some("acme") {
            "acme"
        } else {
            "default"
        };
        assert_wip_limit_rejection(o, tenant);
    }
    // Rejected requests never reach the upstream.
    assert_eq!(upstream.total(), admitted as u64);

    wait_drained(&envoy, &upstream);
    assert_eq!(
        envoy.wasm_stat("wipgate.rq_admitted"),
        Some(admitted as u64)
    );
    assert_eq!(
        envoy.wasm_stat("wipgate.rq_rejected.reason.wip_limit"),
        Some(rejected.len() as u64)
    );
    assert_eq!(envoy.wasm_stat("wipgate.inflight_limit"), Some(10));
    let prom = envoy.prometheus().unwrap();
    assert!(
        prom.contains(&format!(
            "wipgate_rq_rejected{{reason=\"wip_limit\"}} {}",
            rejected.len()
        )),
        "{prom}"
    );
    assert!(prom.contains("wipgate_rq_inflight{} 0"), "{prom}");
    assert_all_slots_free(&envoy, &upstream, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn client_aborts_release_their_slots() {
    require_envoy();
    const LIMIT: usize = 20;
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(&upstream, LIMIT as u32);
    let addr = envoy.listener_addr();
    // 1,000 requests in waves of 40 at once; every third one is aborted by the client
    // while the upstream still holds it (it answers after 200 ms, the client leaves at 50).
    let mut outcomes = Vec::new();
    let mut aborted = 0;
    for wave in 0..25 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let n = wave * 40 + i;
            if n % 3 == 0 {
                aborted += 1;
                let spec = RequestSpec::get("/abort").delay_ms(200);
                tasks.spawn(async move {
                    abort_mid_flight(addr, &spec, Duration::from_millis(50))
                        .await
                        .unwrap();
                    None
                });
            } else {
                let spec = RequestSpec::get("/ok").delay_ms(20);
                tasks.spawn(async move {
                    Some(
                        wipgate_e2e::load::send(addr, &spec, std::time::Instant::now(), DEADLINE)
                            .await,
                    )
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            outcomes.extend(done.unwrap());
        }
    }
    let summary = Summary::of(&outcomes);
    eprintln!(
        "aborts: {aborted} aborted, others {summary}; upstream max {}",
        upstream.max_inflight()
    );
    assert_eq!(aborted, 334);
    // No upstream bound here: an aborted request's slot is free the moment Envoy resets the
    // stream, while the upstream may go on working on it until it notices the reset (see
    // docs/architecture.md), so the upstream can briefly see more than the limit.
    assert_eq!(
        summary.status(200) + summary.status(503),
        outcomes.len(),
        "{summary}"
    );
    // Aborted requests were admitted too: the admitted count covers more than the 200s.
    wait_drained(&envoy, &upstream);
    let admitted = envoy.wasm_stat("wipgate.rq_admitted").unwrap();
    assert!(
        admitted > summary.status(200) as u64,
        "no aborted request was admitted"
    );
    assert_eq!(
        upstream.total(),
        admitted,
        "admitted requests all reached the upstream"
    );
    assert_all_slots_free(&envoy, &upstream, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn upstream_resets_timeouts_and_later_local_replies_release_their_slots() {
    require_envoy();
    const LIMIT: usize = 8;
    let upstream = Upstream::start_default().unwrap();
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(gate_config(LIMIT as u32));
    cfg.route_timeout = Duration::from_millis(300);
    // A later filter that answers with a local reply after wipgate admitted the request.
    cfg.filters_after.push(json!({
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"header_abort": {}, "percentage": {"numerator": 100}}
        }
    }));
    let envoy = Envoy::start(&cfg).unwrap();
    let kinds = |i: usize| match i % 3 {
        0 => RequestSpec::get("/reset").delay_ms(50).reset(),
        1 => RequestSpec::get("/timeout").delay_ms(2_000),
        _ => RequestSpec::get("/fault").header("x-envoy-fault-abort-request", "418"),
    };
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(burst_with(envoy.listener_addr(), 3 * LIMIT, kinds).await);
    }
    let summary = Summary::of(&all);
    eprintln!("resets, timeouts, local replies: {summary}");
    // Resets come back as Envoy's 503 (no x-wipgate-reason), timeouts as 504, the fault
    // filter's local reply as 418; the rest are wipgate's own 503s.
    assert!(
        all.iter()
            .any(|o| o.status == Some(503) && o.reason().is_none()),
        "{summary}"
    );
    assert!(summary.status(504) > 0, "{summary}");
    assert!(summary.status(418) > 0, "{summary}");
    assert!(upstream.max_inflight() <= LIMIT);
    wait_drained(&envoy, &upstream);
    assert_eq!(
        envoy.stat("cluster.upstream.upstream_rq_timeout"),
        Some(summary.status(504) as u64)
    );
    assert_all_slots_free(&envoy, &upstream, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn the_limit_is_envoy_wide_not_per_worker() {
    require_envoy();
    // With 4 workers a per-worker limit of 3 would let up to 12 through.
    let upstream = Upstream::start_default().unwrap();
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(gate_config(3));
    cfg.concurrency = 4;
    let envoy = Envoy::start(&cfg).unwrap();
    for _ in 0..3 {
        let out = burst(
            envoy.listener_addr(),
            60,
            RequestSpec::get("/w").delay_ms(300),
        )
        .await;
        let summary = Summary::of(&out);
        assert!(summary.status(200) >= 3, "{summary}");
    }
    assert_eq!(
        upstream.max_inflight(),
        3,
        "upstream max in-flight with 4 workers"
    );
    assert_all_slots_free(&envoy, &upstream, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_client_that_does_not_read_holds_no_slot_once_the_upstream_is_done() {
    use tokio::io::AsyncWriteExt;
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(&upstream, 1);
    let addr = envoy.listener_addr();
    // Sends its request for half a megabyte, then never reads a byte of the answer.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let spec = RequestSpec::get("/big").header("x-body-bytes", "524288");
    stalled
        .write_all(spec.to_http1(addr).as_bytes())
        .await
        .unwrap();
    wait_until(DEADLINE, "the upstream to have answered", || {
        upstream.total() == 1 && upstream.inflight() == 0
    })
    .unwrap();
    // The response passed through Envoy whole: the slot is back while the client still
    // has not read it. (The filter releases at the response's last byte; Envoy also ends an
    // HTTP/1.1 stream once the response is in the connection's buffer, so a build that
    // released only at the stream's end passes this too. Measured with 2 and 4 MB as well;
    // at 8 MB flow control holds the upstream itself until the route timeout, either way.)
    wait_until(DEADLINE, "the slot to be back", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
    })
    .unwrap();
    let out = burst(addr, 1, RequestSpec::get("/next")).await;
    assert_eq!(out[0].status, Some(200), "{:?}", out[0]);
    drop(stalled);
    wait_drained(&envoy, &upstream);
    assert_eq!(envoy.wasm_stat("wipgate.rq_admitted"), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_calling_envoy_that_retries_5xx_does_not_retry_into_the_gate() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let gate = start(&upstream, 1);
    // The caller: a plain Envoy in front of the gated one, retrying 5xx twice, as an Istio
    // sidecar does by default.
    let mut caller = EnvoyConfig::new(gate.listener_addr());
    caller.retry_policy = Some(json!({"retry_on": "5xx", "num_retries": 2}));
    let caller = Envoy::start(&caller).expect("start the calling Envoy");
    let holder = tokio::spawn({
        let addr = gate.listener_addr();
        async move { burst(addr, 1, RequestSpec::get("/hold").delay_ms(1_500)).await }
    });
    wait_until(DEADLINE, "the slot to be taken", || {
        upstream.inflight() == 1
    })
    .unwrap();
    let out = burst(caller.listener_addr(), 1, RequestSpec::get("/via-caller")).await;
    assert_eq!(out[0].status, Some(503), "{:?}", out[0]);
    assert_eq!(out[0].reason(), Some("wip_limit"));
    assert_eq!(
        gate.wasm_stat("wipgate.rq_rejected.reason.wip_limit"),
        Some(1),
        "one attempt reached the gate, not three"
    );
    assert_eq!(caller.stat("cluster.upstream.upstream_rq_retry"), Some(0));
    assert_eq!(holder.await.unwrap()[0].status, Some(200));
    wait_drained(&gate, &upstream);
}
