//! Prometheus metrics: the API's own request counts and latencies, and fleet gauges that
//! are refreshed from the store at each scrape (so every replica reports the same fleet).

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use wipgate_admission::wire::ResourceHealth;

use crate::probes::state::{health_level, level_gauge};
use crate::probes::{ProbeSample, ProbeStatus};
use crate::status::FleetStatus;

/// All metrics of one service.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `wipgate_control_http_requests_total{method, route, status}`.
    pub requests: IntCounterVec,
    /// `wipgate_control_http_request_duration_seconds{method, route}`.
    pub latency: HistogramVec,
    /// `wipgate_control_sync_total{result}`: `ok`, `degraded`, `unavailable`.
    pub syncs: IntCounterVec,
    store_up: IntGauge,
    instances: IntGauge,
    inflight: IntGauge,
    limit: IntGauge,
    allowance: IntGauge,
    effective_load: Gauge,
    policy_version: IntGauge,
    tenant_inflight: IntGaugeVec,
    tenant_max: IntGaugeVec,
    resource_health: IntGauge,
    resource_limit_percent: IntGauge,
    probe_state: IntGaugeVec,
    probe_up: IntGaugeVec,
    probe_pg: IntGaugeVec,
    probe_latency: GaugeVec,
    probe_http_status: IntGaugeVec,
    probe_errors: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "wipgate_control_http_requests_total",
                "API requests by method, route and status.",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "wipgate_control_http_request_duration_seconds",
                "API request latency.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )?;
        let syncs = IntCounterVec::new(
            Opts::new(
                "wipgate_control_sync_total",
                "Syncs by result: ok, degraded (last allowance repeated), unavailable.",
            ),
            &["result"],
        )?;
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let store_up = gauge(
            "wipgate_control_store_up",
            "1 when the store answered the last check.",
        )?;
        let instances = gauge(
            "wipgate_fleet_instances",
            "Live Envoy instances (synced within the stale window).",
        )?;
        let inflight = gauge(
            "wipgate_fleet_inflight",
            "Requests in flight through the fleet, as last reported.",
        )?;
        let limit = gauge(
            "wipgate_fleet_max_inflight",
            "The policy's global_max_inflight.",
        )?;
        let allowance = gauge(
            "wipgate_fleet_allowance",
            "Sum of the live instances' max_inflight allowances.",
        )?;
        let effective_load = Gauge::new(
            "wipgate_fleet_effective_load",
            "Fleet in-flight / global_max_inflight: scale the protected resource on this (e.g. KEDA).",
        )?;
        let policy_version = gauge(
            "wipgate_fleet_policy_version",
            "Version of the fleet policy.",
        )?;
        let tenant_inflight = IntGaugeVec::new(
            Opts::new(
                "wipgate_fleet_tenant_inflight",
                "Requests in flight per policy tenant entry, fleet-wide.",
            ),
            &["tenant"],
        )?;
        let tenant_max = IntGaugeVec::new(
            Opts::new(
                "wipgate_fleet_tenant_max",
                "A policy tenant entry's fleet-wide max.",
            ),
            &["tenant"],
        )?;
        let resource_health = gauge(
            "wipgate_control_resource_health",
            "Composite health of the protected resource sent to the Envoys: 0 ok, 1 degraded, 2 saturated.",
        )?;
        let resource_limit_percent = gauge(
            "wipgate_control_resource_limit_percent",
            "Percentage of the limits the Envoys keep: 100 ok, limit_percent degraded, 0 saturated (reserved slices only).",
        )?;
        let probe_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let probe_state = probe_vec(
            "wipgate_control_probe_state",
            "A probe's level after hysteresis: 0 ok, 1 degraded, 2 saturated (absent before its first sample).",
            &["probe"],
        )?;
        let probe_up = probe_vec(
            "wipgate_control_probe_up",
            "1 when the probe's last sample got an answer, 0 when it failed or timed out.",
            &["probe"],
        )?;
        let probe_pg = probe_vec(
            "wipgate_control_probe_postgres",
            "Last PostgreSQL sample: value = connections, max_connections or lock_waits.",
            &["probe", "value"],
        )?;
        let probe_latency = GaugeVec::new(
            Opts::new(
                "wipgate_control_probe_latency_seconds",
                "Latency of the last answered sample (PostgreSQL: SELECT 1; HTTP: GET).",
            ),
            &["probe"],
        )?;
        let probe_http_status = probe_vec(
            "wipgate_control_probe_http_status",
            "Status of the last HTTP probe response.",
            &["probe"],
        )?;
        let probe_errors = IntCounterVec::new(
            Opts::new(
                "wipgate_control_probe_errors_total",
                "Probe samples without an answer, by reason: error (connecting, querying) or timeout.",
            ),
            &["probe", "reason"],
        )?;
        for g in [&resource_health, &resource_limit_percent] {
            registry.register(Box::new(g.clone()))?;
        }
        for g in [&probe_state, &probe_up, &probe_pg, &probe_http_status] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(probe_latency.clone()))?;
        registry.register(Box::new(probe_errors.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(syncs.clone()))?;
        for g in [
            &store_up,
            &instances,
            &inflight,
            &limit,
            &allowance,
            &policy_version,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(effective_load.clone()))?;
        registry.register(Box::new(tenant_inflight.clone()))?;
        registry.register(Box::new(tenant_max.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            syncs,
            store_up,
            instances,
            inflight,
            limit,
            allowance,
            effective_load,
            policy_version,
            tenant_inflight,
            tenant_max,
            resource_health,
            resource_limit_percent,
            probe_state,
            probe_up,
            probe_pg,
            probe_latency,
            probe_http_status,
            probe_errors,
        })
    }

    /// Records whether the store answered.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Sets the fleet gauges from a status snapshot.
    pub fn set_fleet(&self, status: &FleetStatus) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.instances.set(clamp(status.totals.instances));
        self.inflight.set(clamp(status.totals.inflight));
        self.limit.set(i64::from(status.global_max_inflight));
        self.allowance.set(clamp(status.totals.allowance));
        self.effective_load.set(status.totals.effective_load);
        self.policy_version.set(clamp(status.policy_version));
        self.tenant_inflight.reset();
        self.tenant_max.reset();
        for (name, t) in &status.tenants {
            self.tenant_inflight
                .with_label_values(&[name])
                .set(clamp(t.inflight));
            if let Some(max) = t.max {
                self.tenant_max
                    .with_label_values(&[name])
                    .set(i64::from(max));
            }
        }
    }

    /// Sets the probe gauges from the probes' state (probes no longer in the policy vanish).
    pub fn set_probes(&self, health: ResourceHealth, probes: &[ProbeStatus]) {
        self.resource_health.set(level_gauge(health_level(health)));
        self.resource_limit_percent.set(match health {
            ResourceHealth::Ok => 100,
            ResourceHealth::Degraded { limit_percent } => i64::from(limit_percent),
            ResourceHealth::Saturated => 0,
        });
        for v in [
            &self.probe_state,
            &self.probe_up,
            &self.probe_pg,
            &self.probe_http_status,
        ] {
            v.reset();
        }
        self.probe_latency.reset();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        #[allow(clippy::cast_precision_loss)] // latencies in ms are far below 2^53
        let seconds = |ms: u64| ms as f64 / 1000.0;
        for p in probes {
            let name = p.name.as_str();
            if let Some(level) = p.state.level() {
                self.probe_state
                    .with_label_values(&[name])
                    .set(level_gauge(level));
            }
            let Some(sample) = p.last_sample else {
                continue;
            };
            let answered = !matches!(sample, ProbeSample::TimedOut | ProbeSample::Failed);
            self.probe_up
                .with_label_values(&[name])
                .set(i64::from(answered));
            match sample {
                ProbeSample::Postgres {
                    connections,
                    max_connections,
                    lock_waits,
                    query_latency_ms,
                } => {
                    for (value, n) in [
                        ("connections", connections),
                        ("max_connections", max_connections),
                        ("lock_waits", lock_waits),
                    ] {
                        self.probe_pg
                            .with_label_values(&[name, value])
                            .set(clamp(n));
                    }
                    self.probe_latency
                        .with_label_values(&[name])
                        .set(seconds(query_latency_ms));
                }
                ProbeSample::Http { status, latency_ms } => {
                    self.probe_http_status
                        .with_label_values(&[name])
                        .set(i64::from(status));
                    self.probe_latency
                        .with_label_values(&[name])
                        .set(seconds(latency_ms));
                }
                ProbeSample::TimedOut | ProbeSample::Failed => {}
            }
        }
    }

    /// Counts a probe sample without an answer; `reason` is `error` or `timeout`.
    pub fn probe_error(&self, probe: &str, reason: &str) {
        self.probe_errors.with_label_values(&[probe, reason]).inc();
    }

    /// Drops the counters of a probe that left the policy.
    pub fn forget_probe(&self, probe: &str) {
        for reason in ["error", "timeout"] {
            let _ = self.probe_errors.remove_label_values(&[probe, reason]);
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}
