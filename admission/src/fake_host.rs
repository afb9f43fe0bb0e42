//! An in-memory [`Host`] for native tests: Envoy's shared-data semantics ([`MemoryStore`]),
//! callouts recorded and answered by the test, and stats kept the way Envoy keeps them
//! (counters per label that every VM of one Envoy adds to). Several admitters and sync
//! drivers sharing one `FakeHost` behave like the worker VMs of one Envoy.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use crate::host::{Callout, Event, Host, WaitEnd};
use crate::labels::{Label, Labels, Usage};
use crate::ledger::ClosedWindow;
use crate::shared_data::{CasError, MemoryStore, SharedData};
use crate::sync::SyncFailure;
use crate::RejectReason;

/// A callout the core made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCall {
    /// The token the host gave it.
    pub token: u32,
    /// Its cluster.
    pub cluster: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Its bearer token, if it carried one.
    pub bearer: Option<String>,
}

/// What the fake's stats hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Per label, Envoy-wide.
    pub usage: BTreeMap<Label, Usage>,
    /// Rejections per reason, all labels.
    pub rejected: BTreeMap<&'static str, u64>,
    /// The limit in force, and whether it is the static configuration's.
    pub limit: Option<(u32, bool)>,
    /// The adaptive limit after the last closed window.
    pub adaptive_limit: Option<u32>,
    /// The Envoy-wide in-flight gauge.
    pub inflight: u64,
    /// In-flight gauges that would have gone below 0 (held at 0): a double decrement.
    pub gauge_underflows: u64,
    /// Releases (including those of slots reclaimed before).
    pub released: u64,
    /// Slots reclaimed from dead VMs.
    pub reclaimed: u64,
    /// Ledger errors.
    pub gate_errors: u64,
    /// Successful syncs.
    pub syncs: u64,
    /// Failed syncs per kind.
    pub sync_failures: BTreeMap<&'static str, u64>,
    /// Requests waiting now (the waiting gauge).
    pub waiting: i64,
    /// Waits ended, per way, with their waited µs.
    pub waits: BTreeMap<&'static str, Vec<u64>>,
}

/// The fake host.
#[derive(Debug, Default)]
pub struct FakeHost {
    store: MemoryStore,
    calls: RefCell<Vec<MadeCall>>,
    next_token: Cell<u32>,
    refuse_calls: Cell<bool>,
    stats: RefCell<Stats>,
    windows: RefCell<Vec<ClosedWindow>>,
    woken: RefCell<Vec<u32>>,
    /// The labels of the limits in force: the sync report's lines.
    in_force: RefCell<BTreeSet<Label>>,
}

impl FakeHost {
    /// A host whose shared data is `store` (e.g. one that fails writes).
    pub fn with_store(store: MemoryStore) -> Self {
        Self {
            store,
            ..Self::default()
        }
    }

    /// Makes the host refuse (`true`) or accept callouts from now on.
    pub fn refuse_calls(&self, refuse: bool) {
        self.refuse_calls.set(refuse);
    }

    /// The callouts made so far, oldest first.
    pub fn calls(&self) -> Vec<MadeCall> {
        self.calls.borrow().clone()
    }

    /// The adaptive windows closed so far, oldest first.
    pub fn windows(&self) -> std::cell::Ref<'_, Vec<ClosedWindow>> {
        self.windows.borrow()
    }

    /// The queues woken since the last call, oldest first (the test delivers them).
    pub fn take_woken(&self) -> Vec<u32> {
        std::mem::take(&mut self.woken.borrow_mut())
    }

    /// A copy of the stats.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    fn count(&self, labels: &Labels, f: impl Fn(&mut Usage)) {
        let mut stats = self.stats.borrow_mut();
        f(stats
            .usage
            .entry(Label::Tenant(labels.tenant.clone()))
            .or_default());
        if let Some(class) = &labels.class {
            f(stats.usage.entry(Label::Class(class.clone())).or_default());
        }
    }
}

impl SharedData for FakeHost {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), CasError> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        self.store.set(key, value, cas)
    }
}

impl Host for FakeHost {
    fn dispatch(&self, call: &Callout<'_>) -> Result<u32, String> {
        if self.refuse_calls.get() {
            return Err("BadArgument".to_owned());
        }
        let token = self.next_token.get() + 1;
        self.next_token.set(token);
        self.calls.borrow_mut().push(MadeCall {
            token,
            cluster: call.cluster.to_owned(),
            body: call.body.to_vec(),
            bearer: call.bearer.map(str::to_owned),
        });
        Ok(token)
    }

    fn record(&self, event: Event<'_>) {
        match event {
            Event::LimitsInForce(limits) => {
                let mut stats = self.stats.borrow_mut();
                stats.limit = Some((limits.config.max_inflight, limits.on_static()));
                let labels: BTreeSet<Label> = limits.partitions.labels_in_force().collect();
                for label in &labels {
                    stats.usage.entry(label.clone()).or_default();
                }
                *self.in_force.borrow_mut() = labels;
            }
            Event::Admitted(labels) => self.count(labels, |u| u.admitted += 1),
            Event::Rejected(labels, reason) => {
                self.count(labels, |u| u.rejected += 1);
                *self
                    .stats
                    .borrow_mut()
                    .rejected
                    .entry(RejectReason::as_str(reason))
                    .or_default() += 1;
            }
            Event::Released(_) => self.stats.borrow_mut().released += 1,
            Event::InFlight(change) => {
                let mut stats = self.stats.borrow_mut();
                let mut underflows = 0;
                let mut add = |gauge: &mut u64, d: i64| {
                    *gauge = gauge.checked_add_signed(d).unwrap_or_else(|| {
                        underflows += 1;
                        0
                    });
                };
                add(&mut stats.inflight, change.total);
                for (label, d) in &change.by_label {
                    add(
                        &mut stats.usage.entry(label.clone()).or_default().inflight,
                        *d,
                    );
                }
                stats.gauge_underflows += underflows;
            }
            Event::Reclaimed(n) => self.stats.borrow_mut().reclaimed += n,
            Event::CasRetries(_) => {}
            Event::GateError => self.stats.borrow_mut().gate_errors += 1,
            Event::WindowClosed(w) => {
                self.stats.borrow_mut().adaptive_limit = Some(w.limit);
                self.windows.borrow_mut().push(*w);
            }
            Event::Queued(_) => self.stats.borrow_mut().waiting += 1,
            Event::WaitEnded(_, waited_us, how) => {
                let mut stats = self.stats.borrow_mut();
                stats.waiting -= 1;
                let how = match how {
                    WaitEnd::Admitted => "admitted",
                    WaitEnd::TimedOut => "timed_out",
                    WaitEnd::Left => "left",
                };
                stats.waits.entry(how).or_default().push(waited_us);
            }
            Event::Synced(Ok(())) => self.stats.borrow_mut().syncs += 1,
            Event::Synced(Err(kind)) => {
                *self
                    .stats
                    .borrow_mut()
                    .sync_failures
                    .entry(SyncFailure::as_str(kind))
                    .or_default() += 1;
            }
        }
    }

    fn wake(&self, queue: u32) {
        self.woken.borrow_mut().push(queue);
    }

    fn usage(&self) -> Vec<(Label, Usage)> {
        let in_force = self.in_force.borrow();
        self.stats
            .borrow()
            .usage
            .iter()
            .filter(|(l, _)| in_force.contains(*l))
            .map(|(l, u)| (l.clone(), *u))
            .collect()
    }
}
