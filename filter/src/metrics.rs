//! The filter's Envoy stats. Counters and gauges are defined in every VM; Envoy backs the
//! same name with one stat for all worker threads, so increments add up Envoy-wide.
//!
//! The in-flight gauge is only ever moved by +1/-1 (and by minus what a reclaim gave back),
//! never set, so concurrent workers cannot overwrite each other's view.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use wipgate_admission::RejectReason;

/// Metric ids of this VM. An id of `None` means the host refused to define it; updates to
/// it are skipped, never fatal.
pub struct Metrics {
    admitted: Option<u32>,
    rejected: [(RejectReason, Option<u32>); 6],
    inflight: Option<u32>,
    limit: Option<u32>,
    reclaimed: Option<u32>,
    gate_errors: Option<u32>,
    cas_retries: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

impl Metrics {
    /// Defines every stat (names in docs/metrics.md).
    pub fn define() -> Self {
        use MetricType::{Counter, Gauge};
        Self {
            admitted: define(Counter, "wipgate.rq_admitted"),
            rejected: RejectReason::ALL.map(|reason| {
                let name = format!("wipgate.rq_rejected.reason.{}", reason.as_str());
                (reason, define(Counter, &name))
            }),
            inflight: define(Gauge, "wipgate.rq_inflight"),
            limit: define(Gauge, "wipgate.inflight_limit"),
            reclaimed: define(Counter, "wipgate.slots_reclaimed"),
            gate_errors: define(Counter, "wipgate.gate_errors"),
            cas_retries: define(Counter, "wipgate.cas_retries"),
        }
    }

    fn add(id: Option<u32>, by: i64) {
        if let (Some(id), true) = (id, by != 0) {
            let _ = hostcalls::increment_metric(id, by);
        }
    }

    /// A request was admitted.
    pub fn admitted(&self) {
        Self::add(self.admitted, 1);
        Self::add(self.inflight, 1);
    }

    /// An admitted request released its slot.
    pub fn released(&self) {
        Self::add(self.inflight, -1);
    }

    /// A request was rejected.
    pub fn rejected(&self, reason: RejectReason) {
        if let Some((_, id)) = self.rejected.iter().find(|(r, _)| *r == reason) {
            Self::add(*id, 1);
        }
    }

    /// Slots of dead VMs were given back.
    pub fn reclaimed(&self, slots: u64) {
        let slots = i64::try_from(slots).unwrap_or(i64::MAX);
        Self::add(self.reclaimed, slots);
        Self::add(self.inflight, -slots);
    }

    /// Attempts lost to concurrent writers of the ledger.
    pub fn cas_retries(&self, retries: u32) {
        Self::add(self.cas_retries, i64::from(retries));
    }

    /// The shared ledger could not be read or written.
    pub fn gate_error(&self) {
        Self::add(self.gate_errors, 1);
    }

    /// The limit in force.
    pub fn set_limit(&self, limit: u32) {
        if let Some(id) = self.limit {
            let _ = hostcalls::record_metric(id, u64::from(limit));
        }
    }
}
