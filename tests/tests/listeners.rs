//! One ledger per plugin configuration (issue 15, item 1) in a real Envoy: two listeners
//! with different wipgate configurations on one `vm_id` keep separate limits; two with the
//! same `scope` share one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use wipgate_e2e::{
    burst, require_envoy, wait_until, Envoy, EnvoyConfig, RequestSpec, Summary, Upstream,
};

const DEADLINE: Duration = Duration::from_secs(15);

/// Slow enough to be all in flight at once.
fn slow() -> RequestSpec {
    RequestSpec::get("/work").delay_ms(600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn two_listeners_with_different_configurations_keep_separate_limits() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let mut cfg =
        EnvoyConfig::new(upstream.addr()).with_filter(json!({"max_inflight": 3}).to_string());
    cfg.extra_listeners = vec![json!({"max_inflight": 5}).to_string()];
    let envoy = Envoy::start(&cfg).unwrap();
    let addrs = envoy.listener_addrs().unwrap();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    // Both listeners flooded at once: each admits its own limit, not a shared one.
    let (first, second) = tokio::join!(burst(addrs[0], 8, slow()), burst(addrs[1], 8, slow()));
    let (first, second) = (Summary::of(&first), Summary::of(&second));
    eprintln!("listener 1 (3): {first}; listener 2 (5): {second}");
    assert_eq!(first.status(200), 3, "{first}");
    assert_eq!(second.status(200), 5, "{second}");
    assert_eq!(upstream.max_inflight(), 8);
    wait_until(DEADLINE, "in flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0) && upstream.inflight() == 0
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn two_listeners_of_one_scope_share_its_limit() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let mut cfg = EnvoyConfig::new(upstream.addr())
        .with_filter(json!({"max_inflight": 4, "scope": "db"}).to_string());
    cfg.extra_listeners =
        vec![json!({"max_inflight": 4, "scope": "db", "retry_after_s": 2}).to_string()];
    let envoy = Envoy::start(&cfg).unwrap();
    let addrs = envoy.listener_addrs().unwrap();
    let (first, second) = tokio::join!(burst(addrs[0], 6, slow()), burst(addrs[1], 6, slow()));
    let admitted = Summary::of(&first).status(200) + Summary::of(&second).status(200);
    assert_eq!(admitted, 4, "one limit for the scope");
    assert!(upstream.max_inflight() <= 4);
    wait_until(DEADLINE, "in flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0) && upstream.inflight() == 0
    })
    .unwrap();
}
