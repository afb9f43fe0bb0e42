//! The probes' Prometheus series: the composite health sent to the Envoys, each probe's
//! level and last sample, and the samples without an answer. Registered in the service's
//! registry, set from the probes' published state before each scrape.

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use wipgate_admission::wire::ResourceHealth;

use super::state::{health_level, level_gauge};
use super::{ProbeSample, ProbeStatus};

/// The probe series of one service.
#[derive(Clone)]
pub struct ProbeMetrics {
    resource_health: IntGauge,
    resource_limit_percent: IntGauge,
    probe_state: IntGaugeVec,
    probe_up: IntGaugeVec,
    probe_pg: IntGaugeVec,
    probe_latency: GaugeVec,
    probe_http_status: IntGaugeVec,
    probe_errors: IntCounterVec,
}

impl ProbeMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
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
        Ok(Self {
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

    /// Sets the probe gauges from the probes' state (probes no longer in the policy vanish).
    pub fn set(&self, health: ResourceHealth, probes: &[ProbeStatus]) {
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
}
