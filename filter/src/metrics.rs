//! The filter's Envoy stats. Counters and gauges are defined in every VM; Envoy backs the
//! same name with one stat for all worker threads, so increments add up Envoy-wide.
//!
//! In-flight gauges are only ever moved by +1/-1 (and by minus what a reclaim gave back),
//! never set, so concurrent workers cannot overwrite each other's view. Per-tenant stats
//! exist for tenants named by the configuration or the fleet policy, plus one `_unlisted`
//! label for all others, so their number never follows what clients send.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use wipgate_admission::adaptive::ChangeReason;
use wipgate_admission::control_sync::SyncFailure;
use wipgate_admission::ledger::ClosedWindow;
use wipgate_admission::partitions::UNLISTED_LABEL;
use wipgate_admission::{Partitions, RejectReason};

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn add(id: Option<u32>, by: i64) {
    if let (Some(id), true) = (id, by != 0) {
        let _ = hostcalls::increment_metric(id, by);
    }
}

fn read(id: Option<u32>) -> u64 {
    id.and_then(|id| hostcalls::get_metric(id).ok())
        .unwrap_or(0)
}

/// Stat names carry a label between dots: keep it one name segment.
fn segment(label: &str) -> String {
    label.replace('.', "_")
}

/// Admitted, rejected per reason and in-flight, under one prefix (Envoy-wide, a tenant or
/// a class). An id of `None` means the host refused to define it: updates skip it.
pub struct RequestStats {
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

    /// (in flight, admitted, rejected) as Envoy holds them, all workers together.
    fn usage(&self) -> (u64, u64, u64) {
        let rejected = self.rejected.iter().map(|id| read(*id)).sum();
        (read(self.inflight), read(self.admitted), rejected)
    }
}

/// Where one request is counted: its tenant's and its class's stats. Held by the stream,
/// so its release is counted where its admission was, whatever limits came since.
#[derive(Clone)]
pub struct StatsSlot {
    tenant: Rc<RequestStats>,
    class: Option<Rc<RequestStats>>,
}

/// Per-label stats, defined on first use.
#[derive(Default)]
struct Labelled {
    kind: &'static str,
    by_label: RefCell<BTreeMap<String, Rc<RequestStats>>>,
}

impl Labelled {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            by_label: RefCell::default(),
        }
    }

    fn get(&self, label: &str) -> Rc<RequestStats> {
        let mut map = self.by_label.borrow_mut();
        let stats = map.entry(label.to_owned()).or_insert_with(|| {
            Rc::new(RequestStats::define(&format!(
                "wipgate.{}.{}",
                self.kind,
                segment(label)
            )))
        });
        Rc::clone(stats)
    }
}

/// Metric ids of this VM (names in docs/metrics.md).
pub struct Metrics {
    all: RequestStats,
    tenants: Labelled,
    classes: Labelled,
    limit: Option<u32>,
    reclaimed: Option<u32>,
    gate_errors: Option<u32>,
    cas_retries: Option<u32>,
    sync_success: Option<u32>,
    sync_failures: [Option<u32>; 5],
    on_static: Option<u32>,
    adaptive_limit: Option<u32>,
    latency_us: [Option<u32>; 3],
    reasons: [Option<u32>; 5],
}

impl Metrics {
    /// Defines the Envoy-wide stats and those of every label of `partitions`.
    pub fn define(partitions: &Partitions) -> Self {
        let metrics = Self {
            all: RequestStats::define("wipgate"),
            tenants: Labelled::new("tenant"),
            classes: Labelled::new("class"),
            limit: define(MetricType::Gauge, "wipgate.inflight_limit"),
            reclaimed: define(MetricType::Counter, "wipgate.slots_reclaimed"),
            gate_errors: define(MetricType::Counter, "wipgate.gate_errors"),
            cas_retries: define(MetricType::Counter, "wipgate.cas_retries"),
            sync_success: define(MetricType::Counter, "wipgate.sync.success"),
            sync_failures: SyncFailure::ALL.map(|kind| {
                define(
                    MetricType::Counter,
                    &format!("wipgate.sync.failure.reason.{}", kind.as_str()),
                )
            }),
            on_static: define(MetricType::Gauge, "wipgate.sync.on_static_config"),
            adaptive_limit: define(MetricType::Gauge, "wipgate.adaptive.limit"),
            latency_us: ["p50", "p90", "p99"].map(|p| {
                define(
                    MetricType::Gauge,
                    &format!("wipgate.adaptive.latency_{p}_us"),
                )
            }),
            reasons: ChangeReason::ALL.map(|r| {
                define(
                    MetricType::Gauge,
                    &format!("wipgate.adaptive.reason.{}", r.as_str()),
                )
            }),
        };
        metrics.define_labels(partitions);
        metrics
    }

    /// Makes sure every label of `partitions` has its stats (new limits may name more).
    pub fn define_labels(&self, partitions: &Partitions) {
        partitions
            .tenant_labels()
            .for_each(|l| drop(self.tenants.get(l)));
        partitions
            .class_labels()
            .for_each(|l| drop(self.classes.get(l)));
    }

    /// The stats of a request of this tenant and class label.
    pub fn slot(&self, tenant: &str, class: Option<&str>) -> StatsSlot {
        StatsSlot {
            tenant: self.tenants.get(tenant),
            class: class.map(|c| self.classes.get(c)),
        }
    }

    fn each(&self, slot: &StatsSlot, f: impl Fn(&RequestStats)) {
        f(&self.all);
        f(&slot.tenant);
        if let Some(class) = &slot.class {
            f(class);
        }
    }

    /// A request was admitted.
    pub fn admitted(&self, slot: &StatsSlot) {
        self.each(slot, RequestStats::admitted);
    }

    /// An admitted request released its slot.
    pub fn released(&self, slot: &StatsSlot) {
        self.each(slot, RequestStats::released);
    }

    /// A request was rejected.
    pub fn rejected(&self, slot: &StatsSlot, reason: RejectReason) {
        self.each(slot, |s| s.rejected(reason));
    }

    /// Per label (`tenant:NAME`, `tenant:*` for the unlisted, `class:NAME`): in flight,
    /// admitted and rejected, Envoy-wide, for the sync report.
    pub fn usage(&self) -> BTreeMap<String, (u64, u64, u64)> {
        let mut out = BTreeMap::new();
        for (labelled, kind) in [(&self.tenants, "tenant"), (&self.classes, "class")] {
            for (label, stats) in labelled.by_label.borrow().iter() {
                let name = if label == UNLISTED_LABEL {
                    "*"
                } else {
                    label.as_str()
                };
                out.insert(format!("{kind}:{name}"), stats.usage());
            }
        }
        out
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

    /// The limit in force, and whether it is the static configuration's.
    pub fn set_limit(&self, limit: u32, on_static: bool) {
        if let Some(id) = self.limit {
            let _ = hostcalls::record_metric(id, u64::from(limit));
        }
        if let Some(id) = self.on_static {
            let _ = hostcalls::record_metric(id, u64::from(on_static));
        }
    }

    /// An adaptive window closed: the limit, the window's latencies, why it last changed
    /// (1 on that reason's gauge, 0 on the others).
    pub fn adaptive(&self, window: &ClosedWindow) {
        let set = |id: Option<u32>, v: u64| {
            if let Some(id) = id {
                let _ = hostcalls::record_metric(id, v);
            }
        };
        set(self.adaptive_limit, u64::from(window.limit));
        let s = &window.sample;
        if s.count > 0 {
            for (id, v) in self.latency_us.iter().zip([s.p50_us, s.p90_us, s.p99_us]) {
                set(*id, v);
            }
        }
        for (id, reason) in self.reasons.iter().zip(ChangeReason::ALL) {
            set(*id, u64::from(reason == window.reason));
        }
    }

    /// A sync with the control service ended.
    pub fn sync(&self, result: Result<(), SyncFailure>) {
        match result {
            Ok(()) => add(self.sync_success, 1),
            Err(kind) => {
                let index = SyncFailure::ALL.iter().position(|k| *k == kind);
                add(index.and_then(|i| self.sync_failures[i]), 1);
            }
        }
    }
}
