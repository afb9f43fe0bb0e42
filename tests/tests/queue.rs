//! The bounded wait in a real Envoy (`--concurrency 2`, V8): a slot released on one worker
//! thread resumes a request waiting on the other; a wait that runs out is answered
//! `503 queue_timeout` on time with nothing released; a client that leaves while waiting
//! leaves no slot and no waiter behind; `max_waiting` holds; and a flooding tenant waits
//! behind the others with no per-tenant configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use wipgate_e2e::client::send;
use wipgate_e2e::{
    abort_mid_flight, burst, require_envoy, wait_until, Envoy, EnvoyConfig, Outcome, RequestSpec,
    Summary, Upstream,
};

const DEADLINE: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn start(upstream: &Upstream, config: serde_json::Value) -> Envoy {
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(config.to_string());
    cfg.exact_balance = true;
    Envoy::start(&cfg).expect("start Envoy with wipgate")
}

/// Waits until nothing is in flight or waiting, in the filter and at the upstream.
fn wait_drained(envoy: &Envoy, upstream: &Upstream) {
    wait_until(
        DEADLINE,
        "in-flight and waiting stats and upstream back at 0",
        || {
            envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
                && envoy.wasm_stat("wipgate.rq_waiting") == Some(0)
                && upstream.inflight() == 0
        },
    )
    .unwrap();
}

/// Sends `spec` on its own connection after `after`, in the background.
fn spawn_send(addr: SocketAddr, spec: RequestSpec, after: Duration) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        send(addr, &spec, Instant::now(), REQUEST_TIMEOUT).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_release_on_one_worker_resumes_a_waiter_on_the_other() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(
        &upstream,
        json!({"max_inflight": 1, "queue": {"timeout_ms": 3000}}),
    );
    // exact_balance: the second connection, opened while the first is busy, lands on the
    // other worker thread; only a hand-off across threads can admit it.
    let addr = envoy.listener_addr();
    let holder = spawn_send(
        addr,
        RequestSpec::get("/hold").delay_ms(400),
        Duration::ZERO,
    );
    let waiter = spawn_send(
        addr,
        RequestSpec::get("/wait").delay_ms(50),
        Duration::from_millis(100),
    );
    let (holder, waiter) = (holder.await.unwrap(), waiter.await.unwrap());
    assert_eq!(
        (holder.status, waiter.status),
        (Some(200), Some(200)),
        "{holder:?} {waiter:?}"
    );
    // It waited for the holder's remaining ~300 ms, then ran its own 50 ms.
    assert!(
        waiter.latency >= Duration::from_millis(300)
            && waiter.latency < Duration::from_millis(1_500),
        "waited {:?}",
        waiter.latency
    );
    assert_eq!(upstream.max_inflight(), 1);
    wait_drained(&envoy, &upstream);
    assert_eq!(envoy.wasm_stat("wipgate.queue.handoffs"), Some(1));
    assert_eq!(envoy.wasm_stat("wipgate.rq_admitted"), Some(2));
    assert!(envoy
        .prometheus()
        .unwrap()
        .contains("wipgate_queue_wait_ms_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_wait_that_runs_out_is_answered_queue_timeout_on_time() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(
        &upstream,
        json!({"max_inflight": 1, "retry_after_s": 2, "queue": {"timeout_ms": 150}}),
    );
    let holder = spawn_send(
        envoy.listener_addr(),
        RequestSpec::get("/hold").delay_ms(1_500),
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = send(
        envoy.listener_addr(),
        &RequestSpec::get("/late").tenant("acme"),
        Instant::now(),
        REQUEST_TIMEOUT,
    )
    .await;
    assert_eq!(out.status, Some(503), "{out:?}");
    assert_eq!(out.reason(), Some("queue_timeout"), "{out:?}");
    assert_eq!(out.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(out.header("retry-after"), Some("2"));
    assert_eq!(
        out.body_json().unwrap(),
        json!({"error": "overloaded", "reason": "queue_timeout", "tenant": "acme", "retry_after_s": 2})
    );
    // Nothing was released while it waited: its own deadline timer answered it.
    assert!(
        out.latency >= Duration::from_millis(150) && out.latency < Duration::from_millis(600),
        "answered after {:?}",
        out.latency
    );
    assert_eq!(holder.await.unwrap().status, Some(200));
    assert_eq!(
        upstream.total(),
        1,
        "the timed-out request never reached the upstream"
    );
    wait_drained(&envoy, &upstream);
    assert_eq!(envoy.wasm_stat("wipgate.queue.timeouts"), Some(1));
    assert_eq!(
        envoy.wasm_stat("wipgate.rq_rejected.reason.queue_timeout"),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn clients_that_leave_while_waiting_leave_no_slot_and_no_waiter() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(
        &upstream,
        json!({"max_inflight": 2, "queue": {"timeout_ms": 5000}}),
    );
    let addr = envoy.listener_addr();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            spawn_send(
                addr,
                RequestSpec::get("/hold").delay_ms(600),
                Duration::ZERO,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let leavers: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                abort_mid_flight(
                    addr,
                    &RequestSpec::get("/leaves"),
                    Duration::from_millis(150),
                )
                .await
            })
        })
        .collect();
    for l in leavers {
        l.await.unwrap().unwrap();
    }
    for h in holders {
        assert_eq!(h.await.unwrap().status, Some(200));
    }
    wait_drained(&envoy, &upstream);
    assert_eq!(envoy.wasm_stat("wipgate.queue.abandoned"), Some(10));
    assert_eq!(
        upstream.total(),
        2,
        "no request that left reached the upstream"
    );
    // Both slots are free: two at once are admitted without waiting.
    let out = burst(addr, 2, RequestSpec::get("/again").delay_ms(100)).await;
    assert_eq!(Summary::of(&out).status(200), 2);
    assert!(
        out.iter().all(|o| o.latency < Duration::from_millis(600)),
        "{out:?}"
    );
    assert_eq!(envoy.wasm_stat("wipgate.queue.handoffs"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn max_waiting_bounds_the_queue() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(
        &upstream,
        json!({"max_inflight": 1, "queue": {"timeout_ms": 5000, "max_waiting": 3}}),
    );
    let addr = envoy.listener_addr();
    let holder = spawn_send(
        addr,
        RequestSpec::get("/hold").delay_ms(500),
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = burst(addr, 10, RequestSpec::get("/more").delay_ms(200)).await;
    assert_eq!(holder.await.unwrap().status, Some(200));
    let summary = Summary::of(&out);
    assert_eq!(
        summary.status(200),
        3,
        "three waited and were served: {summary}"
    );
    let rejected: Vec<&Outcome> = out.iter().filter(|o| o.status == Some(503)).collect();
    assert_eq!(rejected.len(), 7, "{summary}");
    for r in rejected {
        assert_eq!(
            r.reason(),
            Some("wip_limit"),
            "rejected at once, not timed out: {r:?}"
        );
        assert!(r.latency < Duration::from_millis(300), "{r:?}");
    }
    assert_eq!(upstream.max_inflight(), 1);
    wait_drained(&envoy, &upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_flooding_tenant_waits_behind_the_others_with_no_tenant_configuration() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let envoy = start(
        &upstream,
        json!({"max_inflight": 4, "queue": {"timeout_ms": 500}}),
    );
    let addr = envoy.listener_addr();
    // 60 requests of 100 ms from one tenant at once: 1.5 s of work for 4 slots, far more
    // than its waits allow.
    let flood: Vec<_> = (0..60)
        .map(|_| {
            let spec = RequestSpec::get("/flood").tenant("noisy").delay_ms(100);
            spawn_send(addr, spec, Duration::ZERO)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile four quiet tenants send five requests each, one after the other.
    let quiet: Vec<_> = (0..4)
        .map(|q| {
            tokio::spawn(async move {
                let mut outs = Vec::new();
                for _ in 0..5 {
                    let spec = RequestSpec::get("/quiet")
                        .tenant(format!("quiet{q}"))
                        .delay_ms(100);
                    outs.push(send(addr, &spec, Instant::now(), REQUEST_TIMEOUT).await);
                }
                outs
            })
        })
        .collect();
    let mut quiet_outs = Vec::new();
    for q in quiet {
        quiet_outs.extend(q.await.unwrap());
    }
    let mut flood_outs = Vec::new();
    for f in flood {
        flood_outs.push(f.await.unwrap());
    }
    let quiet = Summary::of(&quiet_outs);
    let flood = Summary::of(&flood_outs);
    eprintln!("quiet: {quiet}\nnoisy: {flood}");
    assert_eq!(quiet.status(200), 20, "every quiet request served: {quiet}");
    assert!(
        flood_outs
            .iter()
            .any(|o| o.reason() == Some("queue_timeout")),
        "the flood outran its waits: {flood}"
    );
    assert!(upstream.max_inflight() <= 4);
    wait_drained(&envoy, &upstream);
}
