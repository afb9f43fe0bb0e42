//! Bottleneck probes against a real PostgreSQL (a throwaway cluster per test) and a tiny
//! local HTTP server: levels with hysteresis, the composite health in sync replies over
//! real TCP, `/v1/status` and `/metrics`, and policy changes restarting the probes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::postgres::TestDb;
use common::{free_port, Service};
use serde_json::{json, Value};
use wipgate_e2e::wait::poll_until_async;

const WAIT: Duration = Duration::from_secs(15);

/// The `probes` entry named `name` of `/v1/status`.
async fn probe(svc: &Service, name: &str) -> Option<Value> {
    let status = svc.get("/v1/status").await.json();
    status["probes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// Polls until probe `name` is in `state`; returns its status entry. Every distinct
/// (state, sample) seen on the way goes to `trace`.
async fn wait_state(svc: &Service, name: &str, state: &str, trace: &mut Vec<String>) -> Value {
    let seen = RefCell::new(std::mem::take(trace));
    let seen_ref = &seen;
    let found = poll_until_async(
        WAIT,
        &format!("probe {name} to reach {state}"),
        || async move {
            let p = probe(svc, name).await?;
            let line = format!("{} {}", p["state"], p["last_sample"]);
            let mut seen = seen_ref.borrow_mut();
            if seen.last() != Some(&line) {
                seen.push(line);
            }
            (p["state"] == state).then_some(p)
        },
    )
    .await;
    *trace = seen.into_inner();
    found.unwrap_or_else(|e| panic!("{e:#}: {trace:#?}"))
}

async fn put_policy(svc: &Service, probes: &Value) -> Value {
    let body = json!({"global_max_inflight": 100, "probes": probes}).to_string();
    let put = svc.admin("PUT", "/v1/policy", &body).await;
    assert_eq!(put.status, 200, "{}", put.text());
    put.json()
}

async fn health(svc: &Service) -> Value {
    let reply = svc.sync(&json!({"instance": "envoy-1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["health"].clone()
}

/// `name{labels} value` of the metrics text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Modes of the tiny upstream: how `GET /health` answers.
const FAST: u8 = 0;
const SLOW: u8 = 1;
const FAIL: u8 = 2;
const HANG: u8 = 3;

/// A tiny HTTP server whose `/health` answers as `mode` says.
async fn upstream(mode: Arc<AtomicU8>) -> String {
    async fn health(State(mode): State<Arc<AtomicU8>>) -> StatusCode {
        // Slow and hanging answers are what the probe under test must see.
        match mode.load(Ordering::SeqCst) {
            SLOW => tokio::time::sleep(Duration::from_millis(250)).await,
            HANG => tokio::time::sleep(Duration::from_secs(3)).await,
            FAIL => return StatusCode::INTERNAL_SERVER_ERROR,
            _ => {}
        }
        StatusCode::OK
    }
    let router = axum::Router::new()
        .route("/health", axum::routing::get(health))
        .with_state(mode);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_database_is_ok_and_the_health_reaches_sync_status_and_metrics() {
    let Some(db) = TestDb::start(None) else {
        return;
    };
    let mode = Arc::new(AtomicU8::new(FAST));
    let url = upstream(Arc::clone(&mode)).await;
    let svc = Service::start(&[]).await;
    let orders = json!({"name": "orders-db", "kind": "postgres", "dsn": db.dsn(),
        "interval_ms": 300, "timeout_ms": 300,
        "connections_percent": {"degraded": 70, "saturated": 90},
        "lock_waits": {"degraded": 5, "saturated": 20},
        "query_latency_ms": {"degraded": 250, "saturated": 1000}});
    let inventory = json!({"name": "inventory", "kind": "http", "url": url,
        "interval_ms": 200, "timeout_ms": 200, "enter_after": 1, "leave_after": 1,
        "degraded_limit_percent": 40});
    let policy = put_policy(&svc, &json!([orders, inventory])).await;
    assert_eq!(
        policy["probes"][0]["enter_after"], 2,
        "defaults are filled in"
    );

    let mut trace = Vec::new();
    let db_status = wait_state(&svc, "orders-db", "ok", &mut trace).await;
    wait_state(&svc, "inventory", "ok", &mut trace).await;
    let sample = &db_status["last_sample"];
    assert_eq!(sample["outcome"], "postgres", "{db_status}");
    assert_eq!(sample["max_connections"], 100);
    assert!(
        sample["connections"].as_u64().unwrap() >= 1,
        "the probe's own session"
    );
    assert_eq!(sample["lock_waits"], 0);
    assert_eq!(health(&svc).await, json!({"state": "ok"}));

    let status = svc.get("/v1/status").await.json();
    assert_eq!(status["health"], json!({"state": "ok"}));
    let text = svc.get("/metrics").await.text();
    for (series, value) in [
        ("wipgate_control_resource_health", 0.0),
        ("wipgate_control_resource_limit_percent", 100.0),
        (r#"wipgate_control_probe_state{probe="orders-db"}"#, 0.0),
        (r#"wipgate_control_probe_up{probe="orders-db"}"#, 1.0),
        (
            r#"wipgate_control_probe_postgres{probe="orders-db",value="max_connections"}"#,
            100.0,
        ),
        (
            r#"wipgate_control_probe_http_status{probe="inventory"}"#,
            200.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(metric(
        &text,
        r#"wipgate_control_probe_latency_seconds{probe="orders-db"}"#
    )
    .is_some());

    // One degraded probe: the whole resource is degraded, with that probe's percentage.
    mode.store(FAIL, Ordering::SeqCst);
    wait_state(&svc, "inventory", "degraded", &mut trace).await;
    assert_eq!(
        health(&svc).await,
        json!({"state": "degraded", "limit_percent": 40})
    );
    let text = svc.get("/metrics").await.text();
    assert_eq!(metric(&text, "wipgate_control_resource_health"), Some(1.0));
    assert_eq!(
        metric(&text, "wipgate_control_resource_limit_percent"),
        Some(40.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"wipgate_control_probe_http_status{probe="inventory"}"#
        ),
        Some(500.0)
    );

    // A policy without the HTTP probe: it stops and vanishes; the unchanged database
    // probe keeps running with its state.
    let before = probe(&svc, "orders-db").await.unwrap()["samples"]
        .as_u64()
        .unwrap();
    put_policy(&svc, &json!([policy["probes"][0]])).await;
    assert!(probe(&svc, "inventory").await.is_none());
    let after = probe(&svc, "orders-db").await.unwrap();
    assert_eq!(after["state"], "ok");
    assert!(
        after["samples"].as_u64().unwrap() >= before,
        "not restarted"
    );
    assert_eq!(health(&svc).await, json!({"state": "ok"}));
    let text = svc.get("/metrics").await.text();
    assert!(!text.contains(r#"probe="inventory""#), "{text}");
}

/// A session that blocks on the table lock until it is released.
fn wait_on_lock(c: tokio_postgres::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        c.simple_query("SELECT count(*) FROM wipgate_t")
            .await
            .unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_waiting_on_locks_degrade_then_saturate_then_recover() {
    let Some(db) = TestDb::start(None) else {
        return;
    };
    let admin = db.connect().await;
    admin
        .batch_execute("DROP TABLE IF EXISTS wipgate_t; CREATE TABLE wipgate_t (id int)")
        .await
        .unwrap();
    let svc = Service::start(&[]).await;
    put_policy(
        &svc,
        &json!([{"name": "db", "kind": "postgres", "dsn": db.dsn(),
            "interval_ms": 300, "timeout_ms": 300, "enter_after": 2, "leave_after": 2,
            "lock_waits": {"degraded": 3, "saturated": 8}}]),
    )
    .await;
    let mut trace = Vec::new();
    wait_state(&svc, "db", "ok", &mut trace).await;

    let holder = db.connect().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE wipgate_t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..4 {
        waiters.push(wait_on_lock(db.connect().await));
    }
    let degraded = wait_state(&svc, "db", "degraded", &mut trace).await;
    let waits = degraded["last_sample"]["lock_waits"].as_u64().unwrap();
    assert!((3..8).contains(&waits), "{degraded}");
    assert_eq!(
        health(&svc).await,
        json!({"state": "degraded", "limit_percent": 50})
    );
    for _ in 0..6 {
        waiters.push(wait_on_lock(db.connect().await));
    }
    let saturated = wait_state(&svc, "db", "saturated", &mut trace).await;
    assert!(saturated["last_sample"]["lock_waits"].as_u64().unwrap() >= 8);
    assert_eq!(health(&svc).await, json!({"state": "saturated"}));
    let text = svc.get("/metrics").await.text();
    assert_eq!(
        metric(&text, r#"wipgate_control_probe_state{probe="db"}"#),
        Some(2.0)
    );

    let released = Instant::now();
    holder.batch_execute("COMMIT").await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    let ok = wait_state(&svc, "db", "ok", &mut trace).await;
    assert_eq!(ok["last_sample"]["lock_waits"], 0);
    assert_eq!(health(&svc).await, json!({"state": "ok"}));
    eprintln!(
        "lock waits: back to ok {:?} after the release; trace: {trace:#?}",
        released.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_near_max_connections_saturate() {
    let Some(db) = TestDb::start(Some(20)) else {
        return;
    };
    let svc = Service::start(&[]).await;
    put_policy(
        &svc,
        &json!([{"name": "db", "kind": "postgres", "dsn": db.dsn(),
            "interval_ms": 300, "timeout_ms": 300, "enter_after": 2, "leave_after": 2,
            "connections_percent": {"degraded": 50, "saturated": 85}}]),
    )
    .await;
    let mut trace = Vec::new();
    let ok = wait_state(&svc, "db", "ok", &mut trace).await;
    assert_eq!(ok["last_sample"]["max_connections"], 20);

    let mut sessions = Vec::new();
    for _ in 0..10 {
        sessions.push(db.connect().await);
    }
    let degraded = wait_state(&svc, "db", "degraded", &mut trace).await;
    assert_eq!(
        degraded["last_sample"]["connections"], 11,
        "10 + the probe's own"
    );
    for _ in 0..8 {
        sessions.push(db.connect().await);
    }
    let saturated = wait_state(&svc, "db", "saturated", &mut trace).await;
    assert_eq!(saturated["last_sample"]["connections"], 19, "{saturated}");
    assert_eq!(health(&svc).await, json!({"state": "saturated"}));

    drop(sessions);
    wait_state(&svc, "db", "ok", &mut trace).await;
    eprintln!("connections: {trace:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_degraded_never_ok() {
    let svc = Service::start(&[]).await;
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        free_port()
    );
    put_policy(
        &svc,
        &json!([{"name": "gone", "kind": "postgres", "dsn": dsn,
            "interval_ms": 100, "timeout_ms": 100, "enter_after": 3, "leave_after": 1,
            "connections_percent": {"degraded": 70, "saturated": 90}}]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let p = probe(&svc, "gone").await.unwrap();
        assert_ne!(p["state"], "ok", "{p}");
        if p["state"] != "pending" {
            let reply = health(&svc).await;
            assert_eq!(reply, json!({"state": "degraded", "limit_percent": 50}));
        }
        seen.push(p);
        // Sampling over a fixed window is the test: the probe must never read ok in it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "degraded", "{last}");
    assert!(last["errors"].as_u64().unwrap() >= 3, "{last}");
    assert!(
        last["last_error"].as_str().unwrap().contains("connecting"),
        "{last}"
    );
    let text = svc.get("/metrics").await.text();
    assert!(
        metric(
            &text,
            r#"wipgate_control_probe_errors_total{probe="gone",reason="error"}"#
        )
        .unwrap()
            >= 3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"wipgate_control_probe_up{probe="gone"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, r#"wipgate_control_probe_state{probe="gone"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_follows_latency_and_status() {
    let mode = Arc::new(AtomicU8::new(FAST));
    let url = upstream(Arc::clone(&mode)).await;
    let svc = Service::start(&[]).await;
    put_policy(
        &svc,
        &json!([{"name": "api", "kind": "http", "url": url,
            "interval_ms": 400, "timeout_ms": 400, "enter_after": 2, "leave_after": 2,
            "degraded_limit_percent": 25,
            "latency_ms": {"degraded": 150, "saturated": 1500}, "non_2xx": "saturated"}]),
    )
    .await;
    let mut trace = Vec::new();
    wait_state(&svc, "api", "ok", &mut trace).await;

    mode.store(SLOW, Ordering::SeqCst);
    let slow = wait_state(&svc, "api", "degraded", &mut trace).await;
    assert!(
        slow["last_sample"]["latency_ms"].as_u64().unwrap() >= 150,
        "{slow}"
    );
    assert_eq!(
        health(&svc).await,
        json!({"state": "degraded", "limit_percent": 25})
    );

    mode.store(FAIL, Ordering::SeqCst);
    let failing = wait_state(&svc, "api", "saturated", &mut trace).await;
    assert_eq!(failing["last_sample"]["status"], 500);
    assert_eq!(health(&svc).await, json!({"state": "saturated"}));

    // No answer within timeout_ms: at least degraded (400 ms is short of saturated).
    mode.store(HANG, Ordering::SeqCst);
    let hung = wait_state(&svc, "api", "degraded", &mut trace).await;
    assert_eq!(hung["last_sample"]["outcome"], "timed_out", "{hung}");

    mode.store(FAST, Ordering::SeqCst);
    wait_state(&svc, "api", "ok", &mut trace).await;
    let text = svc.get("/metrics").await.text();
    assert!(
        metric(
            &text,
            r#"wipgate_control_probe_errors_total{probe="api",reason="timeout"}"#
        )
        .unwrap()
            >= 1.0
    );
    eprintln!("http: {trace:#?}");
}
