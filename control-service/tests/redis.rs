//! The Redis store with two replicas on one real Redis: changes through one are served by
//! the other, and 50 instances syncing concurrently through both never get allowances that
//! sum above the fleet numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::{test_redis, unique_prefix, Service};
use serde_json::{json, Value};

const POLICY: &str = r#"{"global_max_inflight": 500,
    "tenants": {"acme": {"reserved": 50, "max": 200}, "*": {"reserved": 10, "max": 100}},
    "classes": {"interactive": {"reserved": 100}, "batch": {"max": 250}}}"#;

#[tokio::test]
async fn a_change_through_one_replica_is_served_by_the_other() {
    let (url, _server) = test_redis();
    let prefix = unique_prefix();
    let (a, b) = (
        Service::redis(&url, &prefix, &[]).await,
        Service::redis(&url, &prefix, &[]).await,
    );
    let ready = b.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["store"].as_str()),
        (200, Some("redis"))
    );
    assert_eq!(
        b.get("/v1/policy").await.json()["global_max_inflight"],
        1000
    );

    let put = a.admin("PUT", "/v1/policy", POLICY).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let version = put.headers["x-wipgate-policy-version"].clone();
    let seen = b.get("/v1/policy").await;
    assert_eq!(seen.headers["x-wipgate-policy-version"], version);
    assert_eq!(
        seen.json()["tenants"]["acme"],
        json!({"reserved": 50, "max": 200})
    );

    assert_eq!(
        b.admin("PUT", "/v1/tenants/globex", r#"{"max": 40}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        a.get("/v1/policy").await.json()["tenants"]["globex"],
        json!({"reserved": 0, "max": 40})
    );
    assert_eq!(
        a.admin("DELETE", "/v1/tenants/globex", "").await.status,
        200
    );
    assert_eq!(
        b.admin("DELETE", "/v1/tenants/globex", "").await.status,
        404
    );
    assert_eq!(
        b.send("PUT", "/v1/policy", "{}", Some("nope")).await.status,
        401
    );

    // A sync through one replica is in the other's status and metrics; its allowance
    // follows the new policy.
    let reply = a
        .sync(&json!({"instance": "e1", "inflight": 7, "tenants": {"acme": {"inflight": 7}}}))
        .await
        .json();
    let current = b.get("/v1/policy").await.headers["x-wipgate-policy-version"].clone();
    assert_ne!(current, version, "two tenant edits since");
    assert_eq!(
        reply["policy_version"].to_string(),
        current.to_str().unwrap()
    );
    assert!(reply["max_inflight"].as_u64().unwrap() <= 500);
    let status = b.get("/v1/status").await.json();
    assert_eq!(status["totals"]["instances"], 1);
    assert_eq!(status["instances"][0]["instance"], "e1");
    assert_eq!(status["instances"][0]["allowance"], reply);
    assert_eq!(status["tenants"]["acme"]["inflight"], 7);
    assert!(b
        .get("/metrics")
        .await
        .text()
        .lines()
        .any(|l| l == "wipgate_fleet_inflight 7"));
}

#[tokio::test]
async fn fifty_instances_through_two_replicas_never_exceed_the_fleet_numbers() {
    let (url, _server) = test_redis();
    let prefix = unique_prefix();
    let replicas = [
        Service::redis(&url, &prefix, &[]).await,
        Service::redis(&url, &prefix, &[]).await,
    ];
    assert_eq!(
        replicas[0].admin("PUT", "/v1/policy", POLICY).await.status,
        200
    );
    let replicas = std::sync::Arc::new(replicas);

    let limits: Value = serde_json::from_str(POLICY).unwrap();
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for round in 0..8u64 {
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let replicas = std::sync::Arc::clone(&replicas);
            tasks.push(tokio::spawn(async move {
                // Demand shifts between rounds so grants have to move between instances.
                let load = (i * 7 + round * 13) % 60 + if i % 5 == round % 5 { 100 } else { 0 };
                let report = json!({"instance": format!("envoy-{i:02}"), "inflight": load,
                    "tenants": {"acme": {"inflight": load / 2, "rejected": load % 3},
                                format!("t{i}"): {"inflight": load / 4}},
                    "classes": {"batch": {"inflight": load / 3}, "interactive": {"inflight": load / 5}}});
                let reply = replicas[(i as usize + round as usize) % 2].sync(&report).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                reply.json()
            }));
        }
        for task in tasks {
            let reply = task.await.unwrap();
            assert_eq!(reply["degraded"], false);
            latest.insert(reply["instance"].as_str().unwrap().to_owned(), reply);
        }
        // Every instance's latest allowance is in force at once: they must fit together.
        let sum = |f: &dyn Fn(&Value) -> u64| latest.values().map(f).sum::<u64>();
        let global = sum(&|r| r["max_inflight"].as_u64().unwrap());
        assert!(
            global <= 500,
            "round {round}: max_inflight sums to {global}"
        );
        for (tenant, kind) in [
            ("acme", "tenants"),
            ("*", "tenants"),
            ("interactive", "classes"),
            ("batch", "classes"),
        ] {
            for field in ["max", "reserved"] {
                let total = sum(&|r| r[kind][tenant][field].as_u64().unwrap_or(0));
                let limit = limits[kind][tenant][field]
                    .as_u64()
                    .unwrap_or(if field == "max" { u64::MAX } else { 0 });
                assert!(
                    total <= limit,
                    "round {round}: {kind}.{tenant}.{field} sums to {total} > {limit}"
                );
            }
        }
        let status = replicas[1].get("/v1/status").await.json();
        assert_eq!(status["totals"]["instances"], 50);
        assert!(status["totals"]["allowance"].as_u64().unwrap() <= 500);
    }
    // The split follows demand: in the last round (7) instances with i % 5 == 2 were busiest.
    let busy = latest["envoy-02"]["max_inflight"].as_u64().unwrap();
    let idle = latest["envoy-01"]["max_inflight"].as_u64().unwrap();
    assert!(busy > idle, "busy {busy} vs idle {idle}");
    assert!(
        latest
            .values()
            .all(|r| r["max_inflight"].as_u64().unwrap() >= 1),
        "floors hold"
    );
}

/// Each replica runs the probes of the shared policy on its own: a policy put through one
/// is picked up by the other within its reconcile interval, and both send the health.
#[tokio::test]
async fn every_replica_probes_the_shared_policy() {
    let (url, _server) = test_redis();
    let prefix = unique_prefix();
    let (a, b) = (
        Service::redis(&url, &prefix, &[]).await,
        Service::redis(&url, &prefix, &[]).await,
    );
    // An upstream that always answers 500.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/health",
        axum::routing::get(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let policy = json!({"global_max_inflight": 10, "probes": [{"name": "api", "kind": "http",
        "url": format!("http://{upstream}/health"), "interval_ms": 100, "timeout_ms": 100,
        "degraded_limit_percent": 30}]});
    let put = a.admin("PUT", "/v1/policy", &policy.to_string()).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let degraded = json!({"state": "degraded", "limit_percent": 30});
    for replica in [&a, &b] {
        common::wait_for(
            "the replica's probe to degrade",
            std::time::Duration::from_secs(10),
            || async {
                let reply = replica.sync(&json!({"instance": "e1"})).await.json();
                (reply["health"] == degraded).then_some(())
            },
        )
        .await;
        assert_eq!(
            replica.get("/v1/status").await.json()["probes"][0]["state"],
            "degraded"
        );
    }
}

/// A v2 report with what the Envoy enforces (`None`: nothing).
fn v2(id: &str, inflight: u32, in_force: Option<&Value>) -> Value {
    let mut r = json!({"version": 2, "instance": id, "nonce": "n1", "inflight": inflight,
        "max_inflight": 1000});
    if let Some(f) = in_force {
        r["in_force"] = json!({"max_inflight": f["max_inflight"], "tenants": f["tenants"],
            "classes": f["classes"]});
    }
    r
}

/// Through two replicas on one Redis: a reply that lowered an Envoy's share is lost, and the
/// room it still enforces is not given to another Envoy until a report shows it released;
/// two processes on one id are two entries; the caps refuse joiners with 429; a fresh fleet
/// warms up.
#[tokio::test]
async fn lost_replies_duplicates_and_caps_on_redis() {
    let (url, _server) = test_redis();
    let prefix = unique_prefix();
    let flags = ["--warm-up-ms", "0", "--max-instances", "3"];
    let (a, b) = (
        Service::redis(&url, &prefix, &flags).await,
        Service::redis(&url, &prefix, &flags).await,
    );
    let put = a
        .admin("PUT", "/v1/policy", r#"{"global_max_inflight": 100}"#)
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let max = |r: &Value| r["max_inflight"].as_u64().unwrap();
    let a1 = a.sync(&v2("envoy-a", 95, None)).await.json();
    let b1 = b.sync(&v2("envoy-b", 50, None)).await.json();
    assert!(max(&a1) > 50, "{a1}");
    // A's demand falls; the reply lowering it is lost: A still enforces a1.
    let lost = b.sync(&v2("envoy-a", 0, Some(&a1))).await.json();
    assert!(max(&lost) < max(&a1), "{lost}");
    let b2 = a.sync(&v2("envoy-b", 100, Some(&b1))).await.json();
    assert!(max(&a1) + max(&b2) <= 100, "A enforces {a1}, B got {b2}");
    // A shows the lower allowance in force: B gets the room at its next sync.
    a.sync(&v2("envoy-a", 0, Some(&lost))).await;
    let b3 = b.sync(&v2("envoy-b", 100, Some(&b2))).await.json();
    assert!(max(&b3) > max(&b2), "{b2} then {b3}");

    // A second process on envoy-a's id is an entry of its own; a fourth instance is refused.
    let mut twin = v2("envoy-a", 10, None);
    twin["nonce"] = json!("n2");
    assert_eq!(a.sync(&twin).await.status, 200);
    let status = b.get("/v1/status").await.json();
    assert_eq!(status["totals"]["instances"], 3, "{status}");
    assert!(status["totals"]["allowance"].as_u64().unwrap() <= 100);
    let refused = b.sync(&v2("envoy-d", 1, None)).await;
    assert_eq!(
        (refused.status, refused.json()["field"].as_str()),
        (429, Some("instance"))
    );

    // A fleet whose records start empty warms up: the first Envoy gets no more than half.
    let fresh = Service::redis(&url, &unique_prefix(), &[]).await;
    assert_eq!(max(&fresh.sync(&v2("first", 900, None)).await.json()), 500);
}

/// A Redis that may evict keys without a TTL is refused: not ready, syncs fail, naming the
/// policy; set back to noeviction, the service uses it without a restart.
#[tokio::test]
async fn a_redis_that_can_evict_fleet_keys_is_refused() {
    let server = common::Redis::start().unwrap();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let set = |policy: &'static str| {
        let mut conn = conn.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg(policy)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    set("allkeys-lru").await;
    let service = Service::redis(&url, &unique_prefix(), &[]).await;
    let ready = service.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("allkeys-lru"),
        "{}",
        ready.text()
    );
    assert_ne!(service.sync(&json!({"instance": "e"})).await.status, 200);
    set("noeviction").await;
    assert_eq!(service.get("/readyz").await.status, 200);
}

/// `rediss://`: a redis-server of the test's own with TLS on a second port and a
/// certificate from a throwaway CA (openssl). With `--redis-ca-file` the service connects
/// and syncs; without it (the system's roots do not know the CA) it is not ready.
#[tokio::test]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(path("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=wipgate-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &path("redis.key"),
        "-out",
        &path("redis.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("redis.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-out",
        &path("redis.crt"),
        "-days",
        "2",
        "-extfile",
        &path("ext"),
    ]);
    let tls_port = common::free_port().to_string();
    let _server = common::Redis::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("redis.crt"),
        "--tls-key-file",
        &path("redis.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ])
    .unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = path("ca.crt");
    let service = Service::redis(&url, &unique_prefix(), &["--redis-ca-file", &ca]).await;
    let ready = service.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let reply = service
        .sync(&json!({"instance": "e1", "inflight": 3}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let untrusted = Service::redis(&url, &unique_prefix(), &[]).await;
    assert_eq!(untrusted.get("/readyz").await.status, 503);
}
