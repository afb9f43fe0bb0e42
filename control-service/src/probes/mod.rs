//! Bottleneck probes: one tokio task per probe of the policy samples the protected resource
//! at its interval, within its timeout, and feeds the pure hysteresis machine of the
//! [`state`] module; [`ProbeHub`] publishes each probe's state and the composite
//! [`ResourceHealth`] that every sync reply carries. Each replica probes on its own.

mod http;
pub mod policy;
mod postgres;
pub mod sample;
pub mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use wipgate_admission::wire::ResourceHealth;

pub use self::policy::{ProbeKind, ProbeLevel, ProbeSpec, Thresholds};
pub use self::sample::ProbeSample;
pub use self::state::{composite, Hysteresis, ProbeState};

use crate::metrics::Metrics;
use crate::store::unix_ms;

/// One probe as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeStatus {
    /// The probe's name in the policy.
    pub name: String,
    /// `postgres` or `http`.
    pub kind: ProbeKind,
    /// The probe's level after hysteresis; `pending` before its first sample.
    pub state: ProbeState,
    /// Limits are scaled to this percentage while the probe is `degraded`.
    pub degraded_limit_percent: u8,
    /// When the probe entered `state`, ms since the epoch.
    pub since_ms: Option<u64>,
    /// The last sample: what it measured, or `timed_out` / `failed`.
    pub last_sample: Option<ProbeSample>,
    /// The level of the last sample alone, before hysteresis.
    pub last_sample_level: Option<ProbeLevel>,
    /// When the last sample was taken, ms since the epoch.
    pub last_sample_ms: Option<u64>,
    /// The last error (connecting, querying, timing out), kept after recovery.
    pub last_error: Option<String>,
    /// When the last error happened, ms since the epoch.
    pub last_error_ms: Option<u64>,
    /// Samples taken since the probe (re)started.
    pub samples: u64,
    /// Samples that failed or timed out since the probe (re)started.
    pub errors: u64,
    /// Which task owns this entry; a replaced task's late writes are ignored.
    #[serde(skip)]
    generation: u64,
}

type Statuses = Arc<Mutex<BTreeMap<String, ProbeStatus>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking probe task cannot leave a status half-written (plain field writes), so
    // a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Running {
    spec: ProbeSpec,
    task: AbortHandle,
}

#[derive(Default)]
struct Tasks {
    running: BTreeMap<String, Running>,
    /// Version of the policy applied last; older ones are ignored.
    version: Option<u64>,
    next_generation: u64,
}

/// The probes of the policy in force: their tasks and their published state.
pub struct ProbeHub {
    statuses: Statuses,
    tasks: Mutex<Tasks>,
    metrics: Metrics,
}

impl ProbeHub {
    /// A hub running no probe.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            statuses: Arc::default(),
            tasks: Mutex::default(),
            metrics,
        }
    }

    /// Runs the probes of policy `version`: probes whose spec is unchanged keep running
    /// (and keep their state), changed ones restart, removed ones stop. A version older
    /// than the last one applied is ignored. Must be called inside the tokio runtime.
    pub fn apply(&self, version: u64, specs: &[ProbeSpec]) {
        let mut tasks = lock(&self.tasks);
        if tasks.version.is_some_and(|v| v > version) {
            return;
        }
        tasks.version = Some(version);
        let wanted: BTreeMap<&str, &ProbeSpec> =
            specs.iter().map(|s| (s.name.as_str(), s)).collect();
        let stale: Vec<String> = tasks
            .running
            .iter()
            .filter(|(name, r)| wanted.get(name.as_str()) != Some(&&r.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(r) = tasks.running.remove(&name) {
                r.task.abort();
                tracing::info!(probe = %name, "probe stopped");
            }
            lock(&self.statuses).remove(&name);
            self.metrics.forget_probe(&name);
        }
        for spec in specs {
            if tasks.running.contains_key(&spec.name) {
                continue;
            }
            tasks.next_generation += 1;
            let generation = tasks.next_generation;
            lock(&self.statuses).insert(
                spec.name.clone(),
                ProbeStatus {
                    name: spec.name.clone(),
                    kind: spec.kind,
                    state: ProbeState::Pending,
                    degraded_limit_percent: spec.degraded_limit_percent,
                    since_ms: None,
                    last_sample: None,
                    last_sample_level: None,
                    last_sample_ms: None,
                    last_error: None,
                    last_error_ms: None,
                    samples: 0,
                    errors: 0,
                    generation,
                },
            );
            let task = tokio::spawn(run(
                spec.clone(),
                generation,
                Arc::clone(&self.statuses),
                self.metrics.clone(),
            ));
            tracing::info!(probe = %spec.name, kind = ?spec.kind, "probe started");
            tasks.running.insert(
                spec.name.clone(),
                Running {
                    spec: spec.clone(),
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Every probe's state, by name.
    pub fn snapshot(&self) -> Vec<ProbeStatus> {
        lock(&self.statuses).values().cloned().collect()
    }

    /// The composite health: the most constrained probe; pending probes do not count.
    pub fn health(&self) -> ResourceHealth {
        health_of(&lock(&self.statuses))
    }
}

fn health_of(statuses: &BTreeMap<String, ProbeStatus>) -> ResourceHealth {
    composite(
        statuses
            .values()
            .map(|s| (s.state.level(), s.degraded_limit_percent)),
    )
}

impl Drop for ProbeHub {
    fn drop(&mut self) {
        for r in lock(&self.tasks).running.values() {
            r.task.abort();
        }
    }
}

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
async fn run(spec: ProbeSpec, generation: u64, statuses: Statuses, metrics: Metrics) {
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
        let now = unix_ms();
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
