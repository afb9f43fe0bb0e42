//! Per-tenant bulkheads and priority classes in a real Envoy (`--concurrency 2`): a noisy
//! tenant or a batch flood cannot starve the rest, and whatever tenant names clients send,
//! Envoy's memory and stats stay bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use wipgate_e2e::keepalive::keepalive;
use wipgate_e2e::{
    burst, require_envoy, wait_until, wait_until_async, Envoy, EnvoyConfig, Outcome, RequestSpec,
    Summary, Upstream,
};

const DEADLINE: Duration = Duration::from_secs(20);

fn start(upstream: &Upstream, config: &Value) -> Envoy {
    let cfg = EnvoyConfig::new(upstream.addr()).with_filter(config.to_string());
    Envoy::start(&cfg).expect("start Envoy with wipgate")
}

fn assert_rejection(out: &Outcome, status: u16, reason: &str, tenant: &str) {
    assert_eq!(out.status, Some(status), "{out:?}");
    assert_eq!(out.reason(), Some(reason), "{out:?}");
    assert_eq!(out.header("retry-after"), Some("1"), "{out:?}");
    let (error, overloaded) = if status == 503 {
        ("overloaded", Some("true"))
    } else {
        ("too_many_requests", None)
    };
    assert_eq!(out.header("x-envoy-overloaded"), overloaded, "{out:?}");
    assert_eq!(out.header("x-envoy-ratelimited"), Some("true"), "{out:?}");
    assert_eq!(
        out.body_json().unwrap(),
        json!({"error": error, "reason": reason, "tenant": tenant, "retry_after_s": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_noisy_tenant_cannot_starve_tenants_inside_their_reservations() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let config = json!({
        "max_inflight": 20,
        "tenants": {
            "noisy": {"reserved": 0, "max": 6},
            "b": {"reserved": 5, "max": 10},
            "c": {"reserved": 5, "max": 10},
            "*": {"reserved": 0, "max": 4}
        }
    });
    let envoy = start(&upstream, &config);
    let addr = envoy.listener_addr();
    // The noisy tenant sends 10x its max at once and holds the upstream for a while...
    let noisy = tokio::spawn(burst(
        addr,
        60,
        RequestSpec::get("/n").tenant("noisy").delay_ms(1_500),
    ));
    wait_until_async(DEADLINE, "the noisy tenant at its max upstream", || {
        upstream.inflight_of("noisy") == 6
    })
    .await
    .unwrap();
    // ... while an unlisted tenant floods the rest, and b and c come within their reservations.
    let stranger = tokio::spawn(burst(
        addr,
        40,
        RequestSpec::get("/s").tenant("stranger").delay_ms(1_000),
    ));
    let b = tokio::spawn(burst(
        addr,
        5,
        RequestSpec::get("/b").tenant("b").delay_ms(300),
    ));
    let c = tokio::spawn(burst(
        addr,
        5,
        RequestSpec::get("/c").tenant("c").delay_ms(300),
    ));
    let (noisy, stranger, b, c) = (
        noisy.await.unwrap(),
        stranger.await.unwrap(),
        b.await.unwrap(),
        c.await.unwrap(),
    );
    for (name, out) in [
        ("noisy", &noisy),
        ("stranger", &stranger),
        ("b", &b),
        ("c", &c),
    ] {
        eprintln!(
            "tenant {name}: {}; upstream max in-flight {}",
            Summary::of(out),
            upstream.max_inflight_of(name)
        );
    }
    assert_eq!(Summary::of(&b).status(200), 5, "b was starved");
    assert_eq!(Summary::of(&c).status(200), 5, "c was starved");
    assert_eq!(upstream.max_inflight_of("b"), 5);
    assert_eq!(upstream.max_inflight_of("c"), 5);
    assert_eq!(upstream.max_inflight_of("noisy"), 6);
    assert_eq!(Summary::of(&noisy).status(200), 6);
    for out in noisy.iter().filter(|o| o.status != Some(200)) {
        assert_rejection(out, 429, "tenant_limit", "noisy");
    }
    assert!(upstream.max_inflight_of("stranger") <= 4);
    assert!(upstream.max_inflight() <= 20);

    wait_until(DEADLINE, "in-flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
    })
    .unwrap();
    assert_eq!(
        envoy.wasm_stat("wipgate.tenant.noisy.rq_rejected.reason.tenant_limit"),
        Some(54)
    );
    assert_eq!(envoy.wasm_stat("wipgate.tenant.b.rq_admitted"), Some(5));
    assert_eq!(envoy.wasm_stat("wipgate.tenant.noisy.rq_inflight"), Some(0));
    let prom = envoy.prometheus().unwrap();
    assert!(
        prom.contains(r#"wipgate_tenant_rq_rejected{reason="tenant_limit",tenant="noisy"} 54"#),
        "{prom}"
    );
    assert!(
        prom.contains(r#"wipgate_tenant_rq_admitted{tenant="_unlisted"}"#),
        "{prom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_batch_flood_cannot_take_the_interactive_reservation() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let config = json!({
        "max_inflight": 10,
        "default_class": "interactive",
        "classes": {"interactive": {"reserved": 6}, "batch": {}, "bulk": {"max": 2}}
    });
    let envoy = start(&upstream, &config);
    let addr = envoy.listener_addr();
    // The upstream counts per x-tenant-id; each class comes from its own tenant here.
    let flood = tokio::spawn(burst(
        addr,
        50,
        RequestSpec::get("/batch")
            .tenant("batch-client")
            .header("x-priority", "batch")
            .delay_ms(1_500),
    ));
    wait_until_async(DEADLINE, "batch at the upstream", || {
        upstream.inflight_of("batch-client") == 4
    })
    .await
    .unwrap();
    // No priority header: the default class, interactive.
    let interactive = burst(addr, 6, RequestSpec::get("/i").tenant("web").delay_ms(200)).await;
    let flood = flood.await.unwrap();
    eprintln!("batch flood: {}", Summary::of(&flood));
    eprintln!("interactive: {}", Summary::of(&interactive));
    assert_eq!(
        Summary::of(&interactive).status(200),
        6,
        "interactive lost its reservation"
    );
    assert_eq!(
        upstream.max_inflight_of("batch-client"),
        4,
        "batch took more than the unreserved 4"
    );
    for out in flood.iter().filter(|o| o.status != Some(200)) {
        assert_rejection(out, 503, "wip_limit", "batch-client");
    }

    let bulk = burst(
        addr,
        10,
        RequestSpec::get("/bulk")
            .header("x-priority", "bulk")
            .delay_ms(300),
    )
    .await;
    assert_eq!(Summary::of(&bulk).status(200), 2, "{}", Summary::of(&bulk));
    for out in bulk.iter().filter(|o| o.status != Some(200)) {
        assert_rejection(out, 429, "class_limit", "default");
    }
    wait_until(DEADLINE, "in-flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
    })
    .unwrap();
    assert_eq!(
        envoy.wasm_stat("wipgate.class.bulk.rq_rejected.reason.class_limit"),
        Some(8)
    );
    assert_eq!(
        envoy.wasm_stat("wipgate.class.interactive.rq_admitted"),
        Some(6)
    );
    let prom = envoy.prometheus().unwrap();
    assert!(
        prom.contains(r#"wipgate_class_rq_rejected{reason="class_limit",class="bulk"} 8"#),
        "{prom}"
    );
}

/// Envoy's allocated heap from the admin `/memory` endpoint.
fn allocated(envoy: &Envoy) -> u64 {
    let body = envoy.admin_get("/memory").unwrap().body;
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["allocated"].as_u64())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_hundred_thousand_tenant_ids_leave_memory_and_stats_bounded() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let config = json!({
        "max_inflight": 50,
        "max_tenants": 64,
        "tenants": {"acme": {"reserved": 5, "max": 20}, "*": {"reserved": 0, "max": 10}}
    });
    let envoy = start(&upstream, &config);
    let addr = envoy.listener_addr();
    let spec = |offset: usize| {
        move |i: usize| RequestSpec::get("/t").tenant(format!("tenant-{}", offset + i))
    };
    // Warm up, then measure stats and memory, then 100,000 more distinct tenants.
    keepalive(addr, 8, 2_000, spec(0)).await.unwrap();
    let stats_before = envoy.stats().unwrap().len();
    let memory_before = allocated(&envoy);
    let tally = keepalive(addr, 8, 100_000, spec(1_000_000)).await.unwrap();
    wait_until(DEADLINE, "in-flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
    })
    .unwrap();
    let stats_after = envoy.stats().unwrap().len();
    let memory_after = allocated(&envoy);
    eprintln!(
        "100,000 tenants: {:?}; stats {stats_before} -> {stats_after}; Envoy allocated {:.1} MiB -> {:.1} MiB",
        tally.by_status,
        memory_before as f64 / 1048576.0,
        memory_after as f64 / 1048576.0
    );
    assert_eq!(tally.status(200), 100_000, "{tally:?}");
    assert_eq!(stats_after, stats_before, "stats grew with tenant ids");
    assert_eq!(
        envoy.wasm_stat("wipgate.tenant._unlisted.rq_admitted"),
        Some(102_000)
    );
    // Bounded, not proportional: 100,000 tenants at even 100 bytes each would be ~10 MiB.
    assert!(
        memory_after < memory_before + 8 * 1048576,
        "Envoy grew from {memory_before} to {memory_after} bytes"
    );
}
