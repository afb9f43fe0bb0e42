//! The probes of the policy in force: which tasks run, and the state they publish. A new
//! policy version restarts only the probes whose spec changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::AbortHandle;
use wipgate_admission::wire::ResourceHealth;

use super::metrics::ProbeMetrics;
use super::runner::run;
use super::{composite, ProbeSpec, ProbeState, ProbeStatus};
use crate::clock::SharedClock;

/// Each probe's published state, by name; written by the probes' tasks.
pub(super) type Statuses = Arc<Mutex<BTreeMap<String, ProbeStatus>>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    metrics: ProbeMetrics,
    /// Timestamps the samples and the level changes.
    clock: SharedClock,
}

impl ProbeHub {
    /// A hub running no probe.
    pub fn new(metrics: ProbeMetrics, clock: SharedClock) -> Self {
        Self {
            statuses: Arc::default(),
            tasks: Mutex::default(),
            metrics,
            clock,
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
                Arc::clone(&self.clock),
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

    /// Sets the probe gauges from the probes' state now (before a scrape).
    pub fn publish_metrics(&self) {
        self.metrics.set(self.health(), &self.snapshot());
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
