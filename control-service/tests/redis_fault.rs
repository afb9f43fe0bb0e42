//! Redis killed mid-run: readiness fails, syncs keep answering with the last allowance
//! marked degraded, admin writes fail with a clear 503; Redis back: the service recovers
//! by itself. Starts and kills its own redis-server (never a shared one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{unique_prefix, wait_for, Redis, Service};
use serde_json::json;

#[tokio::test]
async fn redis_outage_degrades_and_recovers() {
    let mut redis = Redis::start_persistent().unwrap();
    let svc = Service::redis(&redis.url(), &unique_prefix(), &[]).await;
    assert_eq!(svc.get("/readyz").await.status, 200);
    assert_eq!(
        svc.admin("PUT", "/v1/policy", r#"{"global_max_inflight": 300}"#)
            .await
            .status,
        200
    );
    let instances: Vec<_> = (0..10)
        .map(|i| json!({"instance": format!("e{i}"), "inflight": 5 + i}))
        .collect();
    let mut good = Vec::new();
    for report in &instances {
        let reply = svc.sync(report).await;
        assert_eq!(reply.status, 200);
        good.push(reply.json());
    }

    redis.kill();
    let not_ready = wait_for("/readyz to fail", Duration::from_secs(10), || async {
        let r = svc.get("/readyz").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(not_ready.json()["status"], "not ready");

    // Every known instance keeps its last allowance, marked degraded; no 5xx.
    for (report, before) in instances.iter().zip(&good) {
        let reply = svc.sync(report).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let reply = reply.json();
        assert_eq!(reply["degraded"], true);
        assert_eq!(reply["max_inflight"], before["max_inflight"]);
        assert_eq!(reply["policy_version"], before["policy_version"]);
        assert!(
            reply["stale_after_ms"].as_u64().unwrap() <= before["stale_after_ms"].as_u64().unwrap()
        );
    }
    // An instance this replica never served has no last allowance: a clear 503.
    let unknown = svc.sync(&json!({"instance": "newcomer"})).await;
    assert_eq!(unknown.status, 503);
    assert!(unknown.json()["error"]
        .as_str()
        .unwrap()
        .contains("unavailable"));

    // Admin writes fail clearly and do not pretend to have worked.
    let write = svc.admin("PUT", "/v1/tenants/acme", r#"{"max": 10}"#).await;
    assert_eq!(write.status, 503, "{}", write.text());
    assert_eq!(write.headers["retry-after"], "1");
    assert!(write.json()["error"]
        .as_str()
        .unwrap()
        .contains("store is unavailable"));
    assert_eq!(svc.get("/v1/policy").await.status, 503);
    let metrics = svc.get("/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l == "wipgate_control_store_up 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "wipgate_control_sync_total{result=\"degraded\"} 10"),
        "{metrics}"
    );

    // Redis back (same data directory): the service recovers without a restart.
    redis.restart().unwrap();
    wait_for("/readyz to recover", Duration::from_secs(15), || async {
        (svc.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    let reply = wait_for("a fresh allowance", Duration::from_secs(10), || async {
        let r = svc.sync(&instances[0]).await;
        (r.status == 200 && r.json()["degraded"] == false).then(|| r.json())
    })
    .await;
    assert!(reply["max_inflight"].as_u64().unwrap() <= 300);
    assert_eq!(
        svc.get("/v1/policy").await.json()["global_max_inflight"],
        300,
        "policy persisted in Redis"
    );
    assert_eq!(
        svc.admin("PUT", "/v1/tenants/acme", r#"{"max": 10}"#)
            .await
            .status,
        200
    );
}
