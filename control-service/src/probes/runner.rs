//! One probe's task: sample at the probe's interval within its timeout, classify, apply
//! hysteresis, publish the probe's status; until the hub aborts it.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::hub::{lock, Statuses};
use super::metrics::ProbeMetrics;
use super::{http, postgres, Hysteresis, ProbeKind, ProbeSample, ProbeSpec, ProbeState};
use crate::clock::SharedClock;

/// How one probe takes a sample. `reset` drops whatever connection it keeps, after a
/// timeout (the connection may be stuck).
enum Sampler {
    Postgres(Box<postgres::PgProbe>),
    Http(http::HttpProbe),
}

impl Sampler {
    fn new(spec: &ProbeSpec) -> Result<Self, String> {
        match spec.kind {
            ProbeKind::Postgres => {
                postgres::PgProbe::new(spec).map(|p| Self::Postgres(Box::new(p)))
            }
            ProbeKind::Http => http::HttpProbe::new(spec).map(Self::Http),
        }
    }

    async fn sample(&mut self) -> Result<ProbeSample, String> {
        match self {
            Self::Postgres(p) => p.sample().await,
            Self::Http(h) => h.sample().await,
        }
    }

    fn reset(&mut self) {
        if let Self::Postgres(p) = self {
            p.reset();
        }
    }
}

/// One probe's loop: sample, classify, hysteresis, publish; until aborted.
pub(super) async fn run(
    spec: ProbeSpec,
    generation: u64,
    statuses: Statuses,
    metrics: ProbeMetrics,
    clock: SharedClock,
) {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let mut sampler = Sampler::new(&spec);
    let mut machine = Hysteresis::for_spec(&spec);
    let mut ticker = tokio::time::interval(Duration::from_millis(spec.interval_ms));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let started = std::time::Instant::now();
        let (sample, error) = match &mut sampler {
            // A target that cannot even be parsed fails every sample: never healthy.
            Err(e) => (ProbeSample::Failed, Some(e.clone())),
            Ok(s) => match tokio::time::timeout(timeout, s.sample()).await {
                Ok(Ok(sample)) => (sample, None),
                Ok(Err(e)) => (ProbeSample::Failed, Some(e)),
                Err(_) => {
                    s.reset();
                    let e = format!("no answer within timeout_ms ({})", spec.timeout_ms);
                    (ProbeSample::TimedOut, Some(e))
                }
            },
        };
        let now = clock.now_ms();
        let sample_level = spec.classify(&sample);
        let before = machine.level();
        let level = machine.observe(now, sample_level);
        match (&error, failing) {
            (Some(e), false) => {
                tracing::warn!(probe = %spec.name, error = %e, "probe sample failed")
            }
            (Some(e), true) => {
                tracing::debug!(probe = %spec.name, error = %e, "probe sample failed")
            }
            (None, true) => tracing::info!(probe = %spec.name, "probe samples again"),
            (None, false) => {}
        }
        failing = error.is_some();
        if before != Some(level) {
            tracing::warn!(probe = %spec.name, from = ?before, to = ?level, ?sample,
                elapsed_ms = started.elapsed().as_millis(), "probe level changed");
        }
        let mut all = lock(&statuses);
        let Some(status) = all
            .get_mut(&spec.name)
            .filter(|s| s.generation == generation)
        else {
            return; // replaced or removed while sampling
        };
        status.state = ProbeState::from(Some(level));
        status.since_ms = Some(machine.since_ms());
        status.last_sample = Some(sample);
        status.last_sample_level = Some(sample_level);
        status.last_sample_ms = Some(now);
        status.samples += 1;
        if let Some(e) = error {
            status.errors += 1;
            status.last_error = Some(e);
            status.last_error_ms = Some(now);
            let reason = if sample == ProbeSample::TimedOut {
                "timeout"
            } else {
                "error"
            };
            metrics.probe_error(&spec.name, reason);
        }
    }
}
