//! What the root context and every request of one VM share: the validated configuration, the
//! gate and this VM's handle on it, and the stats. Turns the core's reports into stats and
//! (rate-limited) logs, so that `http.rs` and `root.rs` stay one-liners per event.

use std::cell::Cell;

use wipgate_admission::gate::Report;
use wipgate_admission::{
    Admission, Gate, GateConfig, GateError, Partitions, Permit, Placement, RejectReason,
    WorkerHandle,
};

use crate::host::HostSharedData;
use crate::metrics::{Metrics, StatsSlot};

/// At most one log line per this many ms for repeated gate errors.
const ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// One configured plugin in one VM.
pub struct Plugin {
    pub config: GateConfig,
    pub partitions: Partitions,
    gate: Gate,
    worker: WorkerHandle,
    metrics: Metrics,
    last_error_log_ms: Cell<u64>,
}

impl Plugin {
    /// Sets up the gate for a validated configuration.
    pub fn new(config: GateConfig) -> Self {
        let partitions = Partitions::new(&config);
        let metrics = Metrics::define(&partitions);
        let plugin = Self {
            config,
            partitions,
            gate: Gate::default(),
            worker: WorkerHandle::default(),
            metrics,
            last_error_log_ms: Cell::new(0),
        };
        plugin.metrics.set_limit(plugin.config.max_inflight);
        if let Err(e) = plugin.gate.initialize(&HostSharedData) {
            log::error!("cannot initialise the shared in-flight ledger: {e}");
        }
        plugin
    }

    /// Where a request's stats go.
    pub fn stats_slot(&self, placement: &Placement) -> StatsSlot {
        StatsSlot {
            tenant: self.partitions.tenant_index(placement),
            class: self.partitions.class_index(placement),
        }
    }

    /// Asks the gate for a slot. A gate that cannot be read or written fails closed: the
    /// request is rejected as over the limit rather than admitted unaccounted.
    pub fn admit(&self, placement: &Placement, slot: StatsSlot, now_ms: u64) -> Admission {
        let limit = self.config.max_inflight;
        let result = self
            .gate
            .admit(&HostSharedData, &self.worker, now_ms, |ledger| {
                self.partitions.decide(ledger, limit, placement)
            });
        let admission = self
            .account(result, now_ms)
            .unwrap_or(Admission::Rejected(RejectReason::WipLimit));
        match &admission {
            Admission::Admitted(_) => self.metrics.admitted(slot),
            Admission::Rejected(reason) => self.metrics.rejected(slot, *reason),
        }
        admission
    }

    /// Gives a slot back. If the ledger cannot be written now, the release is owed and paid
    /// by this VM's next write (the next heartbeat at the latest).
    pub fn release(&self, permit: Permit, slot: StatsSlot, now_ms: u64) {
        let result = self
            .gate
            .release(&HostSharedData, &self.worker, permit, now_ms);
        self.account(result, now_ms);
        self.metrics.released(slot);
    }

    /// Periodic sign of life; reclaims the slots of dead VMs and pays owed releases.
    pub fn heartbeat(&self, now_ms: u64) {
        let result = self.gate.heartbeat(&HostSharedData, &self.worker, now_ms);
        self.account(result, now_ms);
    }

    fn account<T>(&self, result: Result<Report<T>, GateError>, now_ms: u64) -> Option<T> {
        match result {
            Ok(report) => {
                self.metrics.cas_retries(report.cas_retries);
                if report.reclaimed > 0 {
                    self.metrics.reclaimed(report.reclaimed);
                    log::warn!(
                        "reclaimed {} in-flight slots of a worker VM silent for {} ms",
                        report.reclaimed,
                        wipgate_admission::gate::DEFAULT_LEASE_MS
                    );
                }
                if report.reset_corrupt {
                    log::error!("the shared in-flight ledger was unreadable and was reset");
                }
                Some(report.value)
            }
            Err(e) => {
                self.metrics.gate_error();
                if now_ms.saturating_sub(self.last_error_log_ms.get()) >= ERROR_LOG_INTERVAL_MS {
                    self.last_error_log_ms.set(now_ms);
                    log::error!("shared in-flight ledger error: {e}");
                }
                None
            }
        }
    }
}
