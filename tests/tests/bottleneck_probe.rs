//! The control service's PostgreSQL probe in the loop: when sessions pile up waiting on
//! locks, the probe reports the database saturated, and within two sync intervals a real
//! Envoy answers unreserved work with `503 bottleneck_saturated` while the reserved class
//! keeps its slice; when the locks go, traffic recovers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::NoTls;
use wipgate_e2e::postgres::Postgres;
use wipgate_e2e::processes::{static_cluster, ControlService};
use wipgate_e2e::{
    burst, poll_until_async, require_envoy, wait_until, wait_until_async, Envoy, EnvoyConfig,
    RequestSpec, Summary, Upstream,
};

const SYNC_MS: u64 = 300;
const DEADLINE: Duration = Duration::from_secs(20);

fn batch() -> RequestSpec {
    RequestSpec::get("/report").header("x-priority", "batch")
}

/// One batch request's answer: 200, or the rejection reason.
async fn batch_answer(envoy: &Envoy) -> String {
    let out = burst(envoy.listener_addr(), 1, batch()).await;
    out[0]
        .reason()
        .map_or_else(|| format!("{:?}", out[0].status), str::to_owned)
}

/// Polls until a batch request gets `want`; returns how long it took.
async fn until_batch(envoy: &Envoy, want: &str) -> Duration {
    let start = Instant::now();
    poll_until_async(
        DEADLINE,
        &format!("a batch request to get {want}"),
        || async { (batch_answer(envoy).await == want).then_some(()) },
    )
    .await
    .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn lock_waits_saturate_the_database_and_only_the_reserved_class_goes() {
    require_envoy();
    let pg = Postgres::start(50).unwrap();
    let (admin, conn) = tokio_postgres::connect(&pg.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute("CREATE TABLE orders (id int)")
        .await
        .unwrap();

    let control = ControlService::start(None, &[]).unwrap();
    let policy = json!({
        "global_max_inflight": 1000,
        "probes": [{"name": "orders-db", "kind": "postgres", "dsn": pg.dsn(),
                    "interval_ms": 200, "timeout_ms": 150, "enter_after": 2, "leave_after": 2,
                    "lock_waits": {"degraded": 2, "saturated": 4}}]
    });
    let (status, body) = control.admin("PUT", "/v1/policy", &policy).unwrap();
    assert_eq!(status, 200, "{body}");

    let upstream = Upstream::start_default().unwrap();
    let config = json!({
        "max_inflight": 20,
        "default_class": "interactive",
        "classes": {"interactive": {"reserved": 4}, "batch": {}},
        "control": {"cluster": "wipgate_control", "interval_ms": SYNC_MS, "timeout_ms": 150,
                    "stale_after_ms": 5000}
    });
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(config.to_string());
    cfg.extra_clusters
        .push(static_cluster("wipgate_control", control.addr()));
    let envoy = Envoy::start(&cfg).unwrap();
    wait_until(DEADLINE, "the first sync", || {
        envoy.wasm_stat("wipgate.sync.success").unwrap_or(0) >= 1
    })
    .unwrap();
    assert_eq!(
        batch_answer(&envoy).await,
        "Some(200)",
        "batch goes while the database is fine"
    );

    // One session holds an exclusive lock; six others queue behind it.
    let (holder, conn) = tokio_postgres::connect(&pg.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..6 {
        let (client, conn) = tokio_postgres::connect(&pg.dsn(), NoTls).await.unwrap();
        tokio::spawn(conn);
        waiters.push(tokio::spawn(async move {
            client
                .simple_query("SELECT count(*) FROM orders")
                .await
                .map(|_| ())
        }));
    }
    let locked = Instant::now();
    let saturated_at = {
        let start = Instant::now();
        let mut status = Value::Null;
        wait_until_async(DEADLINE, "the probe to report saturation", || {
            status = control.get_json("/v1/status").unwrap();
            status["health"]["state"] == "saturated"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}; the last status: {status}"));
        start.elapsed()
    };
    let rejected_after = until_batch(&envoy, "bottleneck_saturated").await;
    eprintln!(
        "probe saturated {saturated_at:?} after the locks; Envoy rejecting batch {rejected_after:?} later (sync interval {SYNC_MS} ms)"
    );
    assert!(
        rejected_after <= Duration::from_millis(2 * SYNC_MS + 200),
        "{rejected_after:?}"
    );

    // The reserved class keeps its slice; beyond it, it is rejected too.
    let interactive = burst(
        envoy.listener_addr(),
        6,
        RequestSpec::get("/checkout").delay_ms(300),
    )
    .await;
    let summary = Summary::of(&interactive);
    eprintln!("interactive while saturated: {summary}");
    assert_eq!(summary.status(200), 4, "{summary}");
    assert_eq!(
        summary.by_reason.get("bottleneck_saturated"),
        Some(&2),
        "{summary}"
    );
    let rejected = burst(envoy.listener_addr(), 1, batch()).await;
    assert_eq!(rejected[0].status, Some(503));
    assert_eq!(rejected[0].header("retry-after"), Some("1"));
    assert_eq!(rejected[0].body_json().unwrap()["error"], "overloaded");

    // Locks released: the probe leaves saturation and batch work flows again.
    holder.batch_execute("COMMIT").await.unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    let recovered = until_batch(&envoy, "Some(200)").await;
    eprintln!(
        "recovered {recovered:?} after the locks were released ({:?} in all)",
        locked.elapsed()
    );
}
