//! Tests of the harness itself against a bare Envoy (no wasm filter): it starts, proxies,
//! shows concurrency, upstream resets and timeouts as Envoy reports them, and stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use wipgate_e2e::{
    abort_mid_flight, burst, open_loop, require_envoy, start_expect_refused, wait_until,
    wait_until_async, Envoy, EnvoyConfig, RequestSpec, Summary, Upstream, UpstreamOptions,
};

/// Envoy through the whole test, upstream started first.
fn bare(upstream: &Upstream) -> Envoy {
    Envoy::start(&EnvoyConfig::new(upstream.addr())).expect("start a bare Envoy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn proxies_one_request_and_counts_it() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = bare(&upstream);
    let out = burst(envoy.listener_addr(), 1, RequestSpec::get("/hello")).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, Some(200), "{:?}", out[0]);
    assert_eq!(out[0].body_text(), "ok\n");
    assert_eq!(out[0].header("x-upstream"), Some("wipgate-upstream"));
    assert_eq!(upstream.total(), 1);
    wait_until(Duration::from_secs(5), "Envoy to count the request", || {
        envoy.stat("cluster.upstream.upstream_rq_total") == Some(1)
    })
    .unwrap();
    let stats = envoy.stats().unwrap();
    assert_eq!(stats.get("http.ingress.downstream_rq_2xx"), Some(&1));
    assert!(envoy
        .prometheus()
        .unwrap()
        .contains("envoy_cluster_upstream_rq_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_burst_of_slow_requests_is_all_in_flight_at_the_upstream() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = bare(&upstream);
    let spec = RequestSpec::get("/slow").delay_ms(200).tenant("acme");
    let out = burst(envoy.listener_addr(), 20, spec).await;
    let summary = Summary::of(&out);
    assert_eq!(summary.status(200), 20, "{summary}");
    assert_eq!(upstream.max_inflight(), 20);
    assert_eq!(upstream.max_inflight_of("acme"), 20);
    assert_eq!(upstream.total(), 20);
    assert!(summary.p50 >= Duration::from_millis(200), "{summary}");
    wait_until_async(Duration::from_secs(5), "upstream to drain", || {
        upstream.inflight() == 0
    })
    .await
    .unwrap();
    upstream.reset_stats();
    assert_eq!((upstream.max_inflight(), upstream.total()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn an_upstream_reset_is_a_503_from_envoy() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = bare(&upstream);
    let out = burst(
        envoy.listener_addr(),
        1,
        RequestSpec::get("/").delay_ms(20).reset(),
    )
    .await;
    assert_eq!(out[0].status, Some(503), "{:?}", out[0]);
    assert!(
        out[0].body_text().contains("reset"),
        "{}",
        out[0].body_text()
    );
    assert_eq!(upstream.stats().resets(), 1);
    assert_eq!(upstream.inflight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn the_route_timeout_is_a_504_and_the_upstream_sees_the_request_end() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let mut cfg = EnvoyConfig::new(upstream.addr());
    cfg.route_timeout = Duration::from_millis(300);
    let envoy = Envoy::start(&cfg).unwrap();
    let out = burst(
        envoy.listener_addr(),
        1,
        RequestSpec::get("/").delay_ms(5_000),
    )
    .await;
    assert_eq!(out[0].status, Some(504), "{:?}", out[0]);
    assert!(
        out[0].latency < Duration::from_secs(3),
        "{:?}",
        out[0].latency
    );
    // Envoy resets the upstream request at the timeout: the guard counts it out.
    wait_until_async(
        Duration::from_secs(5),
        "the upstream request to end",
        || upstream.inflight() == 0,
    )
    .await
    .unwrap();
    assert_eq!(envoy.stat("cluster.upstream.upstream_rq_timeout"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_client_abort_ends_the_upstream_request() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = bare(&upstream);
    let spec = RequestSpec::get("/").delay_ms(10_000);
    abort_mid_flight(envoy.listener_addr(), &spec, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(upstream.total(), 1);
    wait_until_async(
        Duration::from_secs(5),
        "the aborted request to end upstream",
        || upstream.inflight() == 0,
    )
    .await
    .unwrap();
}

#[test]
#[ignore = "needs Envoy"]
fn two_envoys_run_at_once_and_stop_ends_the_process() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let mut a = bare(&upstream);
    let mut b = bare(&upstream);
    assert_ne!(a.listener_addr(), b.listener_addr());
    assert!(a.is_running() && b.is_running());
    let pid = a.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    a.stop().unwrap();
    assert!(!a.is_running());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is still there after stop()"
    );
    a.stop().unwrap();
    assert!(b.log().contains("starting main dispatch loop"));
    b.stop().unwrap();
}

#[test]
#[ignore = "needs Envoy"]
fn a_missing_wasm_is_refused_with_a_log_naming_it() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(r#"{"max_inflight": 10}"#);
    cfg.wasm_path = "/nonexistent/wipgate_filter.wasm".into();
    let log = start_expect_refused(&cfg, Duration::from_secs(30)).unwrap();
    assert!(log.contains("/nonexistent/wipgate_filter.wasm"), "{log}");
    let err = Envoy::start(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("exited") && err.contains("make filter"),
        "{err}"
    );
}

#[test]
#[ignore = "needs Envoy"]
fn start_expect_refused_fails_for_a_config_envoy_accepts() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let err = start_expect_refused(&EnvoyConfig::new(upstream.addr()), Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert!(err.contains("accepted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_keeps_its_rate_and_counts_queueing_from_the_due_time() {
    // No Envoy: the upstream alone, with room for one request at a time and 50 ms each,
    // serves 20/s; 40/s for half a second must queue, and latencies show it.
    let upstream = Upstream::start(UpstreamOptions {
        capacity: Some(1),
        service_time: Duration::from_millis(50),
        ..UpstreamOptions::default()
    })
    .unwrap();
    let out = open_loop(upstream.addr(), 40.0, Duration::from_millis(500), |i| {
        RequestSpec::get("/").tenant(if i % 2 == 0 { "even" } else { "odd" })
    })
    .await;
    let summary = Summary::of(&out);
    assert_eq!(summary.status(200), 20, "{summary}");
    // Arrivals every 25 ms, departures every 50 ms: at the last arrival (475 ms) 9 are
    // done and 11 in flight (one either way for scheduling jitter).
    let max = upstream.max_inflight();
    assert!((10..=12).contains(&max), "max in flight {max}");
    assert_eq!(upstream.total_of("even"), 10);
    // Request i is due at 25i ms and done at 50(i+1) ms: latency 50 + 25i ms, so the
    // median is about 275 ms and the last about 525 ms, far above the 50 ms service time.
    assert!(summary.max >= Duration::from_millis(450), "{summary}");
    assert!(summary.p50 >= Duration::from_millis(200), "{summary}");
    assert!(out.iter().all(|o| o.tenant.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_in_flight_until_the_gate_opens() {
    // No Envoy: the upstream alone.
    let upstream = Upstream::start_default().unwrap();
    let held = tokio::spawn(burst(
        upstream.addr(),
        3,
        RequestSpec::get("/h").tenant("held").hold(),
    ));
    let free = burst(upstream.addr(), 2, RequestSpec::get("/f")).await;
    assert_eq!(
        Summary::of(&free).status(200),
        2,
        "x-hold only holds its own"
    );
    wait_until_async(Duration::from_secs(5), "3 held in flight", || {
        upstream.inflight_of("held") == 3
    })
    .await
    .unwrap();
    assert!(!held.is_finished(), "a held request was answered");
    upstream.gate().open();
    let held = held.await.unwrap();
    assert_eq!(Summary::of(&held).status(200), 3);
    assert_eq!(upstream.inflight(), 0);
}
