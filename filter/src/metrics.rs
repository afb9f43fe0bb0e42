//! The filter's Envoy stats. Counters and gauges are defined in every VM; Envoy backs the
//! same name with one stat for all worker threads, so increments add up Envoy-wide.
//!
//! In-flight gauges are only ever moved by +1/-1 (and by minus what a reclaim gave back),
//! never set, so concurrent workers cannot overwrite each other's view. Per-tenant stats
//! exist for listed tenants and one `_unlisted` label, so their number is bounded by the
//! configuration whatever tenant names clients send.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use wipgate_admission::{Partitions, RejectReason};

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn add(id: Option<u32>, by: i64) {
    if let (Some(id), true) = (id, by != 0) {
        let _ = hostcalls::increment_metric(id, by);
    }
}

/// Stat names carry a label between dots: keep it one name segment.
fn segment(label: &str) -> String {
    label.replace('.', "_")
}

/// Admitted, rejected per reason and in-flight, under one prefix (Envoy-wide, a tenant or
/// a class). An id of `None` means the host refused to define it: updates skip it.
struct RequestStats {
    admitted: Option<u32>,
    rejected: [Option<u32>; 6],
    inflight: Option<u32>,
}

impl RequestStats {
    fn define(prefix: &str) -> Self {
        Self {
            admitted: define(MetricType::Counter, &format!("{prefix}.rq_admitted")),
            rejected: RejectReason::ALL.map(|reason| {
                let name = format!("{prefix}.rq_rejected.reason.{}", reason.as_str());
                define(MetricType::Counter, &name)
            }),
            inflight: define(MetricType::Gauge, &format!("{prefix}.rq_inflight")),
        }
    }

    fn admitted(&self) {
        add(self.admitted, 1);
        add(self.inflight, 1);
    }

    fn released(&self) {
        add(self.inflight, -1);
    }

    fn rejected(&self, reason: RejectReason) {
        let index = RejectReason::ALL.iter().position(|r| *r == reason);
        add(index.and_then(|i| self.rejected[i]), 1);
    }
}

/// Where one request is counted: its tenant's and its class's stats.
#[derive(Debug, Clone, Copy)]
pub struct StatsSlot {
    pub tenant: usize,
    pub class: Option<usize>,
}

/// Metric ids of this VM (names in docs/metrics.md).
pub struct Metrics {
    all: RequestStats,
    tenants: Vec<RequestStats>,
    classes: Vec<RequestStats>,
    limit: Option<u32>,
    reclaimed: Option<u32>,
    gate_errors: Option<u32>,
    cas_retries: Option<u32>,
}

impl Metrics {
    /// Defines every stat, per tenant label and per class of `partitions`.
    pub fn define(partitions: &Partitions) -> Self {
        let per = |kind: &str, label: &str| {
            RequestStats::define(&format!("wipgate.{kind}.{}", segment(label)))
        };
        Self {
            all: RequestStats::define("wipgate"),
            tenants: partitions
                .tenant_labels()
                .map(|l| per("tenant", l))
                .collect(),
            classes: partitions.class_labels().map(|l| per("class", l)).collect(),
            limit: define(MetricType::Gauge, "wipgate.inflight_limit"),
            reclaimed: define(MetricType::Counter, "wipgate.slots_reclaimed"),
            gate_errors: define(MetricType::Counter, "wipgate.gate_errors"),
            cas_retries: define(MetricType::Counter, "wipgate.cas_retries"),
        }
    }

    fn each(&self, slot: StatsSlot, f: impl Fn(&RequestStats)) {
        f(&self.all);
        self.tenants.get(slot.tenant).into_iter().for_each(&f);
        slot.class
            .and_then(|c| self.classes.get(c))
            .into_iter()
            .for_each(&f);
    }

    /// A request was admitted.
    pub fn admitted(&self, slot: StatsSlot) {
        self.each(slot, RequestStats::admitted);
    }

    /// An admitted request released its slot.
    pub fn released(&self, slot: StatsSlot) {
        self.each(slot, RequestStats::released);
    }

    /// A request was rejected.
    pub fn rejected(&self, slot: StatsSlot, reason: RejectReason) {
        self.each(slot, |s| s.rejected(reason));
    }

    /// Slots of dead VMs were given back. Only the Envoy-wide gauge can follow: which
    /// tenants those slots belonged to died with the VM's memory.
    pub fn reclaimed(&self, slots: u64) {
        let slots = i64::try_from(slots).unwrap_or(i64::MAX);
        add(self.reclaimed, slots);
        add(self.all.inflight, -slots);
    }

    /// Attempts lost to concurrent writers of the ledger.
    pub fn cas_retries(&self, retries: u32) {
        add(self.cas_retries, i64::from(retries));
    }

    /// The shared ledger could not be read or written.
    pub fn gate_error(&self) {
        add(self.gate_errors, 1);
    }

    /// The limit in force.
    pub fn set_limit(&self, limit: u32) {
        if let Some(id) = self.limit {
            let _ = hostcalls::record_metric(id, u64::from(limit));
        }
    }
}
