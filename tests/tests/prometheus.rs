//! The shipped dashboard and alerts against a real Prometheus: it scrapes a real Envoy
//! running wipgate (adaptive, bulkheads, the bounded queue, synced) and the real control
//! service (with an HTTP probe), with `deploy/prometheus/wipgate-rules.yaml` loaded. Under overload every query of
//! `deploy/grafana/wipgate.json` returns data (no typo'd metric name survives), the WIP
//! utilization alert becomes active, and a saturated probe makes the saturation alert active.
//! The alerts' `for` durations (minutes) are covered by the promtool unit tests
//! (`deploy/prometheus/tests/`); here an alert counts once Prometheus has it pending or
//! firing, that is once its expression holds on real data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use wipgate_e2e::processes::{static_cluster, ControlService};
use wipgate_e2e::prometheus::{Prometheus, ScrapeJob};
use wipgate_e2e::{
    open_loop, require_envoy, wait_until, Envoy, EnvoyConfig, RequestSpec, Summary, Upstream,
    UpstreamOptions,
};

const DEADLINE: Duration = Duration::from_secs(40);
/// What Grafana puts in `$__rate_interval`: here several 1 s scrapes.
const RATE_INTERVAL: &str = "10s";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every query of the dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/grafana/wipgate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                expr.replace("$__rate_interval", RATE_INTERVAL),
            ));
        }
    }
    assert!(out.len() >= 15, "{out:?}");
    out
}

/// The fleet policy: two tenants and an HTTP probe of `probe_url` whose latency thresholds
/// (ms) are `degraded` and `saturated`.
fn policy(probe_url: &str, degraded: u64, saturated: u64) -> Value {
    json!({
        "global_max_inflight": 40,
        "tenants": {"noisy": {"reserved": 0, "max": 20}, "shop": {"reserved": 4, "max": 40}},
        "probes": [{"name": "orders-api", "kind": "http", "url": probe_url,
                    "interval_ms": 200, "timeout_ms": 150, "enter_after": 2, "leave_after": 2,
                    "latency_ms": {"degraded": degraded, "saturated": saturated}}]
    })
}

/// Names of the alerts Prometheus has pending or firing now.
fn active_alerts(prometheus: &Prometheus) -> Vec<String> {
    prometheus
        .alerts()
        .unwrap()
        .iter()
        .map(|a| format!("{} ({})", a["labels"]["alertname"], a["state"]))
        .collect()
}

fn is_active(prometheus: &Prometheus, alert: &str) -> bool {
    active_alerts(prometheus)
        .iter()
        .any(|a| a.starts_with(&format!("\"{alert}\"")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn every_dashboard_query_has_data_and_the_alerts_fire_under_overload() {
    require_envoy();
    // The constrained resource: 8 at a time, 50 ms each (160/s); and the health endpoint
    // the probe samples (20 ms).
    let upstream = Upstream::start(UpstreamOptions {
        capacity: Some(8),
        service_time: Duration::from_millis(50),
        ..UpstreamOptions::default()
    })
    .unwrap();
    let health = Upstream::start(UpstreamOptions {
        service_time: Duration::from_millis(20),
        ..UpstreamOptions::default()
    })
    .unwrap();
    let probe_url = format!("http://{}/health", health.addr());

    let control = ControlService::start(None, &[]).unwrap();
    let (status, body) = control
        .admin("PUT", "/v1/policy", &policy(&probe_url, 1000, 2000))
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let config = json!({
        "max_inflight": 64, "min_inflight": 2, "adaptive": {}, "queue": {"timeout_ms": 50},
        "tenants": {"noisy": {"reserved": 0, "max": 20}, "shop": {"reserved": 4, "max": 64}},
        "control": {"cluster": "wipgate_control", "interval_ms": 300, "timeout_ms": 150,
                    "stale_after_ms": 5000}
    });
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(config.to_string());
    cfg.extra_clusters
        .push(static_cluster("wipgate_control", control.addr()));
    let envoy = Envoy::start(&cfg).unwrap();

    let prometheus = Prometheus::start(
        &[
            ScrapeJob::new("envoy", envoy.admin_addr(), "/stats/prometheus"),
            ScrapeJob::new("wipgate-control", control.addr(), "/metrics"),
        ],
        &[repo("deploy/prometheus/wipgate-rules.yaml")],
    )
    .unwrap();
    let mut targets = Vec::new();
    wait_until(DEADLINE, "both targets scraped", || {
        targets = prometheus.targets().unwrap();
        targets.len() == 2 && targets.iter().all(|t| t.1 == "up")
    })
    .unwrap_or_else(|e| panic!("{e:#}: {targets:?}\n{}", prometheus.log()));
    // Rules load (a broken file would leave Prometheus without them, not refuse to start).
    wait_until(DEADLINE, "the recording rules to have data", || {
        !prometheus
            .query("wipgate:limit_in_force")
            .unwrap()
            .is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", prometheus.log()));
    assert!(
        !is_active(&prometheus, "WipgateWipUtilizationHigh"),
        "idle, yet: {:?}",
        active_alerts(&prometheus)
    );

    // Overload: twice the upstream's capacity, three of four requests from the noisy tenant.
    let load = tokio::spawn(open_loop(
        envoy.listener_addr(),
        320.0,
        Duration::from_secs(15),
        |i| RequestSpec::get("/").tenant(if i % 4 == 3 { "shop" } else { "noisy" }),
    ));

    let queries = dashboard_queries();
    let mut empty = Vec::new();
    wait_until(DEADLINE, "every dashboard query to return data", || {
        empty = queries
            .iter()
            .filter(|(_, q)| prometheus.query(q).unwrap().is_empty())
            .cloned()
            .collect();
        empty.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}; queries without data: {empty:#?}"));
    wait_until(DEADLINE, "rejections in Prometheus", || {
        let q = format!("sum by (reason) (increase(wipgate_rq_rejected[{RATE_INTERVAL}])) > 0");
        !prometheus.query(&q).unwrap().is_empty()
    })
    .unwrap();

    wait_until(DEADLINE, "WipgateWipUtilizationHigh to be active", || {
        is_active(&prometheus, "WipgateWipUtilizationHigh")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: active {:?}; utilization {:?}",
            active_alerts(&prometheus),
            prometheus.query("wipgate:wip_utilization").unwrap()
        )
    });
    let summary = Summary::of(&load.await.unwrap());
    eprintln!("overload: {summary}");
    assert!(
        summary.status(200) > 0 && summary.status(200) < summary.count,
        "{summary}"
    );

    // The probe's thresholds now below the health endpoint's 20 ms: saturated.
    assert!(!is_active(&prometheus, "WipgateBottleneckSaturated"));
    let (status, body) = control
        .admin("PUT", "/v1/policy", &policy(&probe_url, 5, 10))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_until(DEADLINE, "WipgateBottleneckSaturated to be active", || {
        is_active(&prometheus, "WipgateBottleneckSaturated")
    })
    .unwrap_or_else(|e| panic!("{e:#}: active {:?}", active_alerts(&prometheus)));
    let errors = prometheus.rule_errors().unwrap();
    assert!(
        errors.is_empty(),
        "rules that fail on real data: {errors:#?}"
    );
}
