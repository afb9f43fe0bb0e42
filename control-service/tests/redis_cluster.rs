//! The Redis store on a real Redis Cluster (3 masters started by the test on free ports):
//! two replicas share one fleet through it, every key in one slot (the prefix is the hash
//! tag), and the sums hold as on one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{unique_prefix, Service};
use serde_json::{json, Value};
use wipgate_e2e::processes::RedisCluster;

#[tokio::test]
async fn two_replicas_share_one_fleet_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let urls = cluster.urls();
    let prefix = unique_prefix();
    let flags = ["--redis-cluster", "--warm-up-ms", "0"];
    let (a, b) = (
        Service::redis(&urls, &prefix, &flags).await,
        Service::redis(&urls, &prefix, &flags).await,
    );
    let ready = a.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let put = a
        .admin(
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 100, "tenants": {"acme": {"reserved": 10, "max": 40}}}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let mut latest = std::collections::BTreeMap::new();
    for round in 0..4u32 {
        for i in 0..20u32 {
            let replica = if (i + round) % 2 == 0 { &a } else { &b };
            let load = (i * 7 + round * 11) % 30;
            let reply = replica
                .sync(
                    &json!({"version": 2, "instance": format!("envoy-{i}"), "nonce": "n",
                    "inflight": load, "tenants": {"acme": {"inflight": load / 2}},
                    "in_force": latest.get(&i).cloned().unwrap_or(Value::Null)}),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let r = reply.json();
            latest.insert(
                i,
                json!({"max_inflight": r["max_inflight"], "tenants": r["tenants"], "classes": r["classes"]}),
            );
        }
        let sum = |f: &dyn Fn(&Value) -> u64| latest.values().map(f).sum::<u64>();
        assert!(sum(&|r| r["max_inflight"].as_u64().unwrap()) <= 100);
        assert!(sum(&|r| r["tenants"]["acme"]["max"].as_u64().unwrap()) <= 40);
        assert!(sum(&|r| r["tenants"]["acme"]["reserved"].as_u64().unwrap()) <= 10);
    }
    let status = b.get("/v1/status").await.json();
    assert_eq!(status["totals"]["instances"], 20, "{status}");
    assert!(status["totals"]["allowance"].as_u64().unwrap() <= 100);
    // Every key of the fleet is in one slot of one node: the prefix is the hash tag.
    let tag = format!("{{{prefix}}}");
    let mut keys = Vec::new();
    for node in cluster.nodes() {
        let client = redis::Client::open(node.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !found.is_empty() {
            keys.push(found);
        }
    }
    assert_eq!(keys.len(), 1, "the fleet's keys on one node: {keys:?}");
    assert!(keys[0].iter().all(|k| k.starts_with(&tag)), "{keys:?}");
    assert!(
        keys[0].len() >= 23,
        "policy, live, agg and 20 instances: {keys:?}"
    );
}
