//! The filter's Envoy stats (names in docs/metrics.md): the core's events turned into
//! counters and gauges. Counters and gauges are defined in every VM; Envoy backs the same name
//! with one stat for all worker threads, so increments add up Envoy-wide.
//!
//! In-flight gauges move by what each write of the shared ledger changed (kept in the ledger
//! and counted once per compare-and-swap), never by a VM's own +1/-1, so a reclaimed VM's
//! slots or a late release cannot make them drift, and several configurations in one Envoy
//! add up. Per-tenant stats exist for tenants named
//! by the configuration or the fleet policy, plus one `_unlisted` label for all others, so
//! their number never follows what clients send; the sync report carries the labels of the
//! limits in force only.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use wipgate_admission::adaptive::ChangeReason;
use wipgate_admission::labels::{stat_segment, InFlight, Label, Labels, TenantLabel, Usage};
use wipgate_admission::ledger::ClosedWindow;
use wipgate_admission::sync::SyncFailure;
use wipgate_admission::{Event, RejectReason, WaitEnd};

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn add(id: Option<u32>, by: i64) {
    if let (Some(id), true) = (id, by != 0) {
        let _ = hostcalls::increment_metric(id, by);
    }
}

fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

fn read(id: Option<u32>) -> u64 {
    id.and_then(|id| hostcalls::get_metric(id).ok())
        .unwrap_or(0)
}

/// One counter per item of `all`, named by `name`.
fn define_each<T: Copy, const N: usize>(
    all: [T; N],
    name: impl Fn(T) -> String,
) -> [Option<u32>; N] {
    all.map(|item| define(MetricType::Counter, &name(item)))
}

/// Admitted, rejected per reason and in-flight, under one prefix (Envoy-wide, a tenant or
/// a class). An id of `None` means the host refused to define it: updates skip it.
struct RequestStats {
    admitted: Option<u32>,
    rejected: [Option<u32>; 6],
    inflight: Option<u32>,
    waiting: Option<u32>,
}

impl RequestStats {
    fn define(prefix: &str) -> Self {
        Self {
            admitted: define(MetricType::Counter, &format!("{prefix}.rq_admitted")),
            rejected: define_each(RejectReason::ALL, |reason| {
                format!("{prefix}.rq_rejected.reason.{}", reason.as_str())
            }),
            inflight: define(MetricType::Gauge, &format!("{prefix}.rq_inflight")),
            waiting: define(MetricType::Gauge, &format!("{prefix}.rq_waiting")),
        }
    }

    fn queued(&self) {
        add(self.waiting, 1);
    }

    fn dequeued(&self) {
        add(self.waiting, -1);
    }

    fn admitted(&self) {
        add(self.admitted, 1);
    }

    fn rejected(&self, reason: RejectReason) {
        let index = RejectReason::ALL.iter().position(|r| *r == reason);
        add(index.and_then(|i| self.rejected[i]), 1);
    }

    /// As Envoy holds them, all workers together.
    fn usage(&self) -> Usage {
        Usage {
            inflight: read(self.inflight),
            admitted: read(self.admitted),
            rejected: self.rejected.iter().map(|id| read(*id)).sum(),
        }
    }
}

/// Per-label stats, defined on first use.
struct Labelled<K> {
    prefix: &'static str,
    by_label: RefCell<BTreeMap<K, Rc<RequestStats>>>,
}

impl<K: Ord + Clone> Labelled<K> {
    fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            by_label: RefCell::default(),
        }
    }

    /// `segment` is the label's stat name segment (escaped already).
    fn get(&self, label: &K, segment: &str) -> Rc<RequestStats> {
        let mut map = self.by_label.borrow_mut();
        let stats = map.entry(label.clone()).or_insert_with(|| {
            let prefix = format!("wipgate.{}.{segment}", self.prefix);
            Rc::new(RequestStats::define(&prefix))
        });
        Rc::clone(stats)
    }

    /// Counts of the labels `keep` accepts.
    fn usage(&self, keep: impl Fn(&K) -> bool) -> Vec<(K, Usage)> {
        let map = self.by_label.borrow();
        map.iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, s)| (k.clone(), s.usage()))
            .collect()
    }
}

/// Metric ids of this VM.
pub struct Metrics {
    all: RequestStats,
    /// The labels of the limits in force (the sync report's lines).
    in_force: RefCell<BTreeSet<Label>>,
    tenants: Labelled<TenantLabel>,
    classes: Labelled<Arc<str>>,
    limit: Option<u32>,
    reclaimed: Option<u32>,
    gate_errors: Option<u32>,
    cas_retries: Option<u32>,
    sync_success: Option<u32>,
    sync_failures: [Option<u32>; SyncFailure::ALL.len()],
    on_static: Option<u32>,
    adaptive_limit: Option<u32>,
    /// The adaptive limit's floor (`min_inflight`, 1 by default; 0 without `adaptive`), so
    /// an alert can tell a limit pinned at its floor.
    adaptive_floor: Option<u32>,
    latency_us: [Option<u32>; 3],
    reasons: [Option<u32>; ChangeReason::ALL.len()],
    changes: [Option<u32>; ChangeReason::ALL.len()],
    /// The knee algorithm's no-load latency (µs), delivery rate (per s) and knee.
    estimates: [Option<u32>; 3],
    /// Waits ended by a slot, by their deadline, by the client leaving.
    wait_ends: [Option<u32>; 3],
    /// How long waits lasted (ms), whatever their end.
    wait_ms: Option<u32>,
}

impl Metrics {
    /// Defines the Envoy-wide stats; per-label stats follow the limits in force.
    pub fn define() -> Self {
        let gauge = |name: &str| define(MetricType::Gauge, name);
        let counter = |name: &str| define(MetricType::Counter, name);
        Self {
            all: RequestStats::define("wipgate"),
            in_force: RefCell::default(),
            tenants: Labelled::new("tenant"),
            classes: Labelled::new("class"),
            limit: gauge("wipgate.inflight_limit"),
            reclaimed: counter("wipgate.slots_reclaimed"),
            gate_errors: counter("wipgate.gate_errors"),
            cas_retries: counter("wipgate.cas_retries"),
            sync_success: counter("wipgate.sync.success"),
            sync_failures: define_each(SyncFailure::ALL, |kind| {
                format!("wipgate.sync.failure.reason.{}", kind.as_str())
            }),
            on_static: gauge("wipgate.sync.on_static_config"),
            adaptive_limit: gauge("wipgate.adaptive.limit"),
            adaptive_floor: gauge("wipgate.adaptive.min_limit"),
            latency_us: ["p50", "p90", "p99"]
                .map(|p| gauge(&format!("wipgate.adaptive.latency_{p}_us"))),
            reasons: ChangeReason::ALL
                .map(|r| gauge(&format!("wipgate.adaptive.reason.{}", r.as_str()))),
            changes: define_each(ChangeReason::ALL, |r| {
                format!("wipgate.adaptive.changes.reason.{}", r.as_str())
            }),
            estimates: ["no_load_latency_us", "delivery_rate_per_s", "knee_estimate"]
                .map(|name| gauge(&format!("wipgate.adaptive.{name}"))),
            wait_ends: ["handoffs", "timeouts", "abandoned"]
                .map(|name| counter(&format!("wipgate.queue.{name}"))),
            wait_ms: define(MetricType::Histogram, "wipgate.queue.wait_ms"),
        }
    }

    /// Counts one event of the core.
    pub fn record(&self, event: Event<'_>) {
        match event {
            Event::LimitsInForce(limits) => {
                for tenant in limits.partitions.tenant_labels() {
                    self.tenants.get(&tenant, &tenant.stat_name());
                }
                for class in limits.partitions.class_labels() {
                    self.classes.get(&class, &stat_segment(&class));
                }
                *self.in_force.borrow_mut() = limits.partitions.labels_in_force().collect();
                set(self.limit, u64::from(limits.config.max_inflight));
                set(self.on_static, u64::from(limits.on_static()));
                let floor = limits.config.min_inflight.unwrap_or(1).max(1);
                set(
                    self.adaptive_floor,
                    limits
                        .config
                        .adaptive
                        .as_ref()
                        .map_or(0, |_| u64::from(floor)),
                );
            }
            Event::Admitted(labels) => self.each(labels, RequestStats::admitted),
            Event::Rejected(labels, reason) => self.each(labels, |s| s.rejected(reason)),
            Event::Released(_) => {}
            Event::Reclaimed(slots) => {
                add(self.reclaimed, i64::try_from(slots).unwrap_or(i64::MAX));
            }
            Event::InFlight(now) => self.inflight(now),
            Event::CasRetries(n) => add(self.cas_retries, i64::from(n)),
            Event::GateError => add(self.gate_errors, 1),
            Event::WindowClosed(window) => self.adaptive(window),
            Event::Queued(labels) => self.each(labels, RequestStats::queued),
            Event::WaitEnded(labels, waited_us, how) => {
                self.each(labels, RequestStats::dequeued);
                let index = match how {
                    WaitEnd::Admitted => 0,
                    WaitEnd::TimedOut => 1,
                    WaitEnd::Left => 2,
                };
                add(self.wait_ends[index], 1);
                set(self.wait_ms, waited_us / 1_000);
            }
            Event::Synced(Ok(())) => add(self.sync_success, 1),
            Event::Synced(Err(kind)) => {
                let index = SyncFailure::ALL.iter().position(|k| *k == kind);
                add(index.and_then(|i| self.sync_failures[i]), 1);
            }
        }
    }

    /// The in-flight gauges move by what a write of the ledger changed.
    fn inflight(&self, change: &InFlight) {
        add(self.all.inflight, change.total);
        for (label, d) in &change.by_label {
            let stats = match label {
                Label::Tenant(t) => self.tenants.get(t, &t.stat_name()),
                Label::Class(c) => self.classes.get(c, &stat_segment(c)),
            };
            add(stats.inflight, *d);
        }
    }

    /// Envoy-wide counts per tenant and class of the limits in force, for the sync report
    /// (labels of limits no longer in force are not reported, so the report stays bounded).
    pub fn usage(&self) -> Vec<(Label, Usage)> {
        let in_force = self.in_force.borrow();
        let tenants = self
            .tenants
            .usage(|t| in_force.contains(&Label::Tenant(t.clone())))
            .into_iter();
        let classes = self
            .classes
            .usage(|c| in_force.contains(&Label::Class(Arc::clone(c))))
            .into_iter();
        tenants
            .map(|(t, u)| (Label::Tenant(t), u))
            .chain(classes.map(|(c, u)| (Label::Class(c), u)))
            .collect()
    }

    fn each(&self, labels: &Labels, f: impl Fn(&RequestStats)) {
        f(&self.all);
        f(&self.tenants.get(&labels.tenant, &labels.tenant.stat_name()));
        if let Some(class) = &labels.class {
            f(&self.classes.get(class, &stat_segment(class)));
        }
    }

    /// An adaptive window closed: the limit, the window's latencies, why it last changed
    /// (1 on that reason's gauge, 0 on the others).
    fn adaptive(&self, window: &ClosedWindow) {
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
        if let Some(change) = window.change {
            let index = ChangeReason::ALL.iter().position(|r| *r == change);
            add(index.and_then(|i| self.changes[i]), 1);
        }
        if let Some(e) = &window.estimates {
            let values = [
                u64::from(e.no_load_us),
                e.delivered_per_s.round() as u64,
                e.knee.round() as u64,
            ];
            for (id, v) in self.estimates.iter().zip(values) {
                set(*id, v);
            }
        }
    }
}
