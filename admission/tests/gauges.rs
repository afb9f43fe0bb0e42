//! The stats cannot drift or grow without bound: in-flight gauges follow the ledger (a
//! reclaimed VM's slots and its late releases are counted once), and the sync report carries
//! the labels of the limits in force only (issue 15, items 5 and 9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::json;
use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::labels::{Label, TenantLabel};
use wipgate_admission::wire::SyncRequest;
use wipgate_admission::{Admitter, Decision, GateConfig, SyncDriver, Ticket};

fn admitter(host: &FakeHost, json: &str) -> Admitter {
    Admitter::new(GateConfig::parse(json.as_bytes()).unwrap(), host)
}

fn admit(a: &Admitter, host: &FakeHost, tenant: &str, class: &str, now_us: u64) -> Ticket {
    match a.admit(
        host,
        Some(tenant.as_bytes()),
        Some(class.as_bytes()),
        now_us,
    ) {
        Decision::Admitted(t) => t,
        other => panic!("expected an admission, got {other:?}"),
    }
}

fn tenant(name: &str) -> Label {
    Label::Tenant(TenantLabel::Listed(Arc::from(name)))
}

fn inflight(host: &FakeHost, label: &Label) -> u64 {
    host.stats().usage[label].inflight
}

const BULKHEADS: &str = r#"{"max_inflight": 10, "tenants": {"acme": {"max": 5}},
    "classes": {"interactive": {}, "batch": {}}, "default_class": "interactive"}"#;

#[test]
fn a_reclaim_and_the_late_releases_of_the_reclaimed_slots_count_once() {
    let host = FakeHost::default();
    let (silent, live) = (admitter(&host, BULKHEADS), admitter(&host, BULKHEADS));
    let t1 = admit(&silent, &host, "acme", "batch", 1_000_000);
    let t2 = admit(&silent, &host, "zed", "interactive", 1_000_000);
    let t3 = admit(&live, &host, "acme", "batch", 1_000_000);
    assert_eq!(host.stats().inflight, 3);
    assert_eq!(inflight(&host, &tenant("acme")), 2);
    // The silent VM misses its lease: the live one's heartbeat reclaims its two slots, and
    // every gauge (Envoy-wide, per tenant, per class) drops by them at once.
    live.heartbeat(&host, 5_000);
    live.heartbeat(&host, 10_000);
    live.heartbeat(&host, 11_500);
    assert_eq!(host.stats().reclaimed, 2);
    assert_eq!(host.stats().inflight, 1);
    assert_eq!(inflight(&host, &tenant("acme")), 1);
    assert_eq!(inflight(&host, &Label::Tenant(TenantLabel::Unlisted)), 0);
    assert_eq!(inflight(&host, &Label::Class(Arc::from("batch"))), 1);
    assert_eq!(inflight(&host, &Label::Class(Arc::from("interactive"))), 0);
    // It was alive after all: its late releases give back nothing, and take nothing off.
    silent.release(&host, t1, Some(200), 12_000_000);
    silent.release(&host, t2, Some(200), 12_000_000);
    assert_eq!(host.stats().inflight, 1, "no double decrement");
    assert_eq!(inflight(&host, &tenant("acme")), 1);
    live.release(&host, t3, Some(200), 12_100_000);
    let stats = host.stats();
    assert_eq!(stats.inflight, 0);
    assert!(stats.usage.values().all(|u| u.inflight == 0), "{stats:?}");
    assert_eq!(stats.gauge_underflows, 0);
}

const SYNCED: &str = r#"{"max_inflight": 50, "control": {"cluster": "wipgate_control",
    "interval_ms": 1000, "timeout_ms": 250, "stale_after_ms": 5000}}"#;

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn reply(tenants: &[&str]) -> Vec<u8> {
    let tenants: serde_json::Map<_, _> = tenants
        .iter()
        .map(|t| ((*t).to_owned(), json!({"reserved": 0, "max": 5})))
        .collect();
    json!({"instance": "envoy-1", "policy_version": 2, "max_inflight": 40,
           "tenants": tenants, "classes": {}, "degraded": false, "stale_after_ms": 4000})
    .to_string()
    .into_bytes()
}

/// Ticks the driver at `now_ms`, answers its call with `tenants`, returns the report it sent.
fn sync(
    host: &FakeHost,
    a: &Admitter,
    s: &mut SyncDriver,
    tenants: &[&str],
    now_ms: u64,
) -> SyncRequest {
    a.heartbeat(host, now_ms);
    s.on_tick(host, a, now_ms);
    let call = host.calls().last().unwrap().clone();
    s.on_response(host, a, call.token, Some(200), &reply(tenants), now_ms + 10);
    serde_json::from_slice(&call.body).unwrap()
}

#[test]
fn the_sync_report_names_the_tenants_of_the_limits_in_force_only() {
    let host = FakeHost::default();
    let config = GateConfig::parse(SYNCED.as_bytes()).unwrap();
    let mut s = SyncDriver::new(config.control.clone().unwrap(), "envoy-1".to_owned());
    let a = Admitter::new(config, &host);
    // The fleet policy names a thousand tenants, then a thousand others, then one.
    let first: Vec<String> = (0..1000).map(|i| format!("old{i}")).collect();
    let second: Vec<String> = (0..1000).map(|i| format!("new{i}")).collect();
    sync(&host, &a, &mut s, &names(&first), 1_000);
    let report = sync(&host, &a, &mut s, &names(&second), 2_000);
    assert!(
        report.tenants.contains_key("old7"),
        "the first policy is in force"
    );
    sync(&host, &a, &mut s, &["acme"], 3_000);
    let report = sync(&host, &a, &mut s, &["acme"], 4_000);
    let reported: Vec<&str> = report.tenants.keys().map(String::as_str).collect();
    assert_eq!(
        reported,
        ["*", "acme"],
        "labels of old limits are not reported"
    );
    assert!(report.validate().is_ok());
}
