//! What the root context and every request of one VM share: the static configuration, the
//! limits in force, the gate and this VM's handle on it, and the stats. Turns the core's
//! reports into stats and (rate-limited) logs, so that `http.rs` and `root.rs` stay short.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wipgate_admission::gate::{Finish, Report};
use wipgate_admission::{
    Admission, Gate, GateConfig, GateError, Permit, Placement, RejectReason, TenantName,
    WorkerHandle,
};

use crate::host::HostSharedData;
use crate::limits::{load_allowance, Limits};
use crate::metrics::{Metrics, StatsSlot};

/// At most one log line per this many ms for repeated errors of one kind.
pub const ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// One configured plugin in one VM.
pub struct Plugin {
    /// The validated plugin configuration.
    pub static_config: GateConfig,
    limits: RefCell<Rc<Limits>>,
    /// The allowance `seq` the cached limits were built for.
    loaded_seq: Cell<u64>,
    /// The latest allowance `seq` seen in the ledger.
    seen_seq: Cell<u64>,
    gate: Gate,
    worker: WorkerHandle,
    pub metrics: Metrics,
    last_error_log_ms: Cell<u64>,
}

impl Plugin {
    /// Sets up the gate for a validated configuration.
    pub fn new(static_config: GateConfig) -> Self {
        let limits = Limits::build(&static_config, None, 0);
        let metrics = Metrics::define(&limits.partitions);
        metrics.set_limit(limits.config.max_inflight, true);
        let gate = Gate::default().with_adaptive(
            static_config.adaptive.clone(),
            static_config.min_inflight.unwrap_or(1),
            static_config.max_inflight,
        );
        if let Err(e) = gate.initialize(&HostSharedData) {
            log::error!("cannot initialise the shared in-flight ledger: {e}");
        }
        Self {
            static_config,
            limits: RefCell::new(Rc::new(limits)),
            loaded_seq: Cell::new(0),
            seen_seq: Cell::new(0),
            gate,
            worker: WorkerHandle::default(),
            metrics,
            last_error_log_ms: Cell::new(0),
        }
    }

    /// The limits in force: rebuilt only when a new allowance was announced in the ledger
    /// or the current one went stale.
    pub fn limits(&self, now_ms: u64) -> Rc<Limits> {
        let current = Rc::clone(&self.limits.borrow());
        let seq = self.seen_seq.get();
        if now_ms < current.valid_until_ms && seq == self.loaded_seq.get() {
            return current;
        }
        let next = Rc::new(Limits::build(
            &self.static_config,
            load_allowance().as_ref(),
            now_ms,
        ));
        if next.seq.is_none() && current.seq.is_some() {
            log::warn!(
                "the control service's allowance is stale: back on the static configuration"
            );
        }
        self.loaded_seq.set(seq);
        self.metrics.define_labels(&next.partitions);
        self.metrics
            .set_limit(next.config.max_inflight, next.seq.is_none());
        *self.limits.borrow_mut() = Rc::clone(&next);
        next
    }

    /// Where a request belongs under `limits`, and where its stats go.
    pub fn place(
        &self,
        limits: &Limits,
        tenant: TenantName,
        priority: Option<&[u8]>,
    ) -> (Placement, StatsSlot) {
        let placement = limits.partitions.place(tenant, priority);
        let slot = self.metrics.slot(
            limits.partitions.tenant_label(&placement),
            limits.partitions.class_label(&placement),
        );
        (placement, slot)
    }

    /// Asks the gate for a slot. A gate that cannot be read or written fails closed: the
    /// request is rejected as over the limit rather than admitted unaccounted.
    pub fn admit(
        &self,
        limits: &Limits,
        placement: &Placement,
        slot: &StatsSlot,
        now_ms: u64,
    ) -> Admission {
        let max = limits.config.max_inflight;
        let result = self
            .gate
            .admit(&HostSharedData, &self.worker, now_ms, |ledger| {
                // The adaptive limit, when on, can only lower the configured (or fleet) one.
                let limit = max.min(ledger.adaptive_limit().unwrap_or(u32::MAX));
                limits.partitions.decide(ledger, limit, placement)
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
    pub fn release(&self, permit: Permit, slot: &StatsSlot, finish: Option<Finish>, now_ms: u64) {
        let result = self
            .gate
            .release(&HostSharedData, &self.worker, permit, finish, now_ms);
        self.account(result, now_ms);
        self.metrics.released(slot);
    }

    /// Periodic sign of life; reclaims the slots of dead VMs, pays owed releases, and
    /// notices new or stale limits while no request comes.
    pub fn heartbeat(&self, now_ms: u64) {
        let result = self.gate.heartbeat(&HostSharedData, &self.worker, now_ms);
        self.account(result, now_ms);
        self.limits(now_ms);
    }

    /// Requests in flight through this Envoy now.
    pub fn inflight(&self) -> u64 {
        self.gate.inflight(&HostSharedData).unwrap_or(0)
    }

    /// Tells every worker that allowance `seq` is in shared data.
    pub fn publish_limits(&self, seq: u64, now_ms: u64) {
        let result = self
            .gate
            .publish_limits(&HostSharedData, &self.worker, seq, now_ms);
        self.account(result, now_ms);
    }

    /// True at most once per [`ERROR_LOG_INTERVAL_MS`] per `last` cell.
    pub fn may_log(last: &Cell<u64>, now_ms: u64) -> bool {
        let due = now_ms.saturating_sub(last.get()) >= ERROR_LOG_INTERVAL_MS || last.get() == 0;
        if due {
            last.set(now_ms);
        }
        due
    }

    fn account<T>(&self, result: Result<Report<T>, GateError>, now_ms: u64) -> Option<T> {
        match result {
            Ok(report) => {
                self.seen_seq.set(report.limits_seq);
                if let Some(window) = &report.window {
                    self.metrics.adaptive(window);
                }
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
                if Self::may_log(&self.last_error_log_ms, now_ms) {
                    log::error!("shared in-flight ledger error: {e}");
                }
                None
            }
        }
    }
}
