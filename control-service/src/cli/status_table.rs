//! `wipgate-control status`: the live fleet of `GET /v1/status` as an operator reads it in
//! a terminal: one summary line, then the instances, the tenants and the probes.

use std::fmt::Write as _;

use serde_json::Value;

use super::table::render;
use crate::status::FleetStatus;

/// The text of `wipgate-control status`.
#[must_use]
pub fn render_status(status: &FleetStatus) -> String {
    let t = &status.totals;
    let mut out = format!(
        "policy version {}  global_max_inflight {}  instances {}  in flight {}  allowances {}  effective load {:.2}  health {}\n",
        status.policy_version,
        status.global_max_inflight,
        t.instances,
        t.inflight,
        t.allowance,
        t.effective_load,
        health(&status.health)
    );
    out.push('\n');
    let instances: Vec<Vec<String>> = status
        .instances
        .iter()
        .map(|i| {
            vec![
                i.instance.clone(),
                ago(status.now_ms, i.last_seen_ms),
                i.report.inflight.to_string(),
                i.allowance.max_inflight.to_string(),
                i.allowance.policy_version.to_string(),
                if i.allowance.degraded { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let headers = [
        "INSTANCE",
        "LAST SYNC",
        "IN FLIGHT",
        "ALLOWANCE",
        "POLICY",
        "REPEATED",
    ];
    out.push_str(&render(&headers, &instances));
    if !status.tenants.is_empty() {
        out.push('\n');
        let tenants: Vec<Vec<String>> = status
            .tenants
            .iter()
            .map(|(name, s)| {
                vec![
                    name.clone(),
                    s.inflight.to_string(),
                    s.max.map_or_else(|| "-".to_owned(), |m| m.to_string()),
                    s.reserved.to_string(),
                    s.allowance_max.to_string(),
                    s.allowance_reserved.to_string(),
                ]
            })
            .collect();
        let headers = [
            "TENANT",
            "IN FLIGHT",
            "MAX",
            "RESERVED",
            "ALLOWED MAX",
            "ALLOWED RESERVED",
        ];
        out.push_str(&render(&headers, &tenants));
    }
    if !status.probes.is_empty() {
        out.push('\n');
        let probes: Vec<Vec<String>> = status
            .probes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    text(&json(&p.kind)),
                    text(&json(&p.state)),
                    p.since_ms
                        .map_or_else(|| "-".to_owned(), |s| ago(status.now_ms, s)),
                    p.last_sample
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |s| sample(&json(s))),
                    format!("{}/{}", p.errors, p.samples),
                    p.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let headers = [
            "PROBE",
            "KIND",
            "STATE",
            "SINCE",
            "LAST SAMPLE",
            "ERRORS",
            "LAST ERROR",
        ];
        out.push_str(&render(&headers, &probes));
    }
    out
}

/// A status field as the API serializes it (enums by their JSON names).
fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// `ok`, `degraded 50%` or `saturated`.
fn health(h: &wipgate_admission::wire::ResourceHealth) -> String {
    let v = json(h);
    let state = text(&v["state"]);
    match v["limit_percent"].as_u64() {
        Some(p) => format!("{state} {p}%"),
        None => state,
    }
}

/// A sample's measures as `name=value` pairs, e.g. `status=200 latency_ms=3`.
fn sample(v: &Value) -> String {
    let Some(fields) = v.as_object() else {
        return text(v);
    };
    let mut out = text(&v["outcome"]);
    for (k, value) in fields.iter().filter(|(k, _)| k.as_str() != "outcome") {
        let _ = write!(out, " {k}={value}");
    }
    out
}

/// How long before `now_ms` that was, e.g. `1.2 s ago`.
fn ago(now_ms: u64, then_ms: u64) -> String {
    let ms = now_ms.saturating_sub(then_ms);
    #[allow(clippy::cast_precision_loss)] // ms since a recent event: far below 2^52.
    let s = ms as f64 / 1000.0;
    format!("{s:.1} s ago")
}
