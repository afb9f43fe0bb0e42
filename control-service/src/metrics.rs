//! Prometheus metrics: the API's own request counts and latencies, and fleet gauges that
//! are refreshed from the store at each scrape (so every replica reports the same fleet).
//! The probes register their own series in the same registry (`probes::ProbeMetrics`).

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

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

    /// The registry every series of this service is in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}
