//! The Envoy-wide WIP gate: admit and release against the shared [`Ledger`] with
//! compare-and-swap, so the limit holds for all worker threads together.
//!
//! Every change is a read-modify-write of the whole ledger: read it with its version, apply a
//! pure change, write it back only if nobody wrote in between, else read again. Each mismatch
//! means another worker made progress, so the loop is lock-free; it is still bounded.

use std::cell::{Cell, RefCell};

use thiserror::Error;

use crate::adaptive::{AdaptiveConfig, Outcome};
use crate::ledger::{
    ClosedWindow, GaugeDeltas, Ledger, LedgerError, PartitionKey, Pressure, Seat, Waiter, WorkerId,
    LEDGER_KEY,
};
use crate::queue::{QueueConfig, SeatRule};
use crate::shared_data::{CasError, SharedData};
use crate::RejectReason;

/// Read-modify-write attempts before giving up on one change.
pub const MAX_CAS_ATTEMPTS: u32 = 1_000;

/// A VM that has not written the ledger nor sent a heartbeat for this long is taken as
/// dead, and its slots are given back. Heartbeats go out every second.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// The result of an admission decision.
#[derive(Debug)]
pub enum Admission {
    /// Admitted: the permit must be released exactly once, whatever way the stream ends.
    Admitted(Permit),
    /// Rejected: nothing was taken, nothing is to be released.
    Rejected(RejectReason),
    /// Queued: the request waits in the ledger for a slot to be handed to it
    /// ([`Gate::claim`]) or to be withdrawn ([`Gate::withdraw`]); nothing is held yet.
    Waiting,
}

/// Where a request that finds no slot may wait: its token in its VM, and the host queue
/// that wakes the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spot {
    /// The stream's token, unique within the VM.
    pub token: u32,
    /// The VM's wake-up queue.
    pub queue: u32,
}

/// How a withdrawn wait had ended in the ledger.
#[derive(Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// It was still waiting: now it is not.
    Withdrawn,
    /// A slot had been handed to it: here it is (when asked to keep it).
    Granted(Permit),
    /// A slot had been handed to it and was given back at once (when asked not to keep it).
    GivenBack,
    /// Neither: its VM's entry was reclaimed, and the wait with it.
    Gone,
}

/// One admitted request's slot. Not `Clone`: [`Gate::release`] consumes it, so a slot cannot
/// be released twice.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be released"]
pub struct Permit {
    worker: WorkerId,
    keys: Vec<PartitionKey>,
    /// Taken under the gate's own key (after a move away from another build's record): a
    /// permit gives its slot back only in the ledger it was taken from.
    own_key: bool,
}

/// One worker VM's view of the gate: its ledger entry and the releases it still owes.
#[derive(Debug, Default)]
pub struct WorkerHandle {
    current: Cell<Option<WorkerId>>,
    /// Releases whose write failed; paid with the next successful write, so none is lost.
    owed: RefCell<Vec<(Permit, Option<Finish>)>>,
    /// The gate's key holds a record of another format version (another build wrote it
    /// under the same key): this VM never overwrites it and uses the gate's own key instead.
    diverted: Cell<bool>,
    /// Rejections decided on a ledger that was only read, folded into this VM's next write.
    unwritten: Cell<Unwritten>,
}

/// What rejections that wrote nothing still have to tell the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Unwritten {
    /// Rejections that count as demand above the adaptive limit.
    demand: u32,
    /// The first and the last of them (ms), if any.
    since_ms: Option<u64>,
    last_ms: u64,
}

/// A VM's rejections are folded into the ledger by its next write, and at least this often
/// while it only rejects, so the adaptive window and the overload age see them in time.
const UNWRITTEN_MAX_AGE_MS: u64 = 50;

impl WorkerHandle {
    /// Releases waiting for the next successful write (a stat, and a test hook).
    pub fn owed_releases(&self) -> usize {
        self.owed.borrow().len()
    }

    /// This VM's entry in the ledger, once it has one.
    pub fn current_id(&self) -> Option<WorkerId> {
        self.current.get()
    }

    /// A rejection for a full limit that wrote nothing: told with the next write.
    fn note_unwritten(&self, demand: bool, now_ms: u64) {
        let mut u = self.unwritten.get();
        u.demand = u.demand.saturating_add(u32::from(demand));
        u.since_ms.get_or_insert(now_ms);
        u.last_ms = now_ms;
        self.unwritten.set(u);
    }
}

/// How an admitted request ended, for the adaptive limit: admission to end of stream, and
/// its outcome. `None` where nothing can be said (the client left before any response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// Microseconds from admission to the end of the stream.
    pub latency_us: u64,
    /// Success or error.
    pub outcome: Outcome,
}

/// Why the ledger could not be changed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GateError {
    /// The host's shared data failed.
    #[error(transparent)]
    Host(#[from] CasError),
    /// Every attempt met a concurrent writer.
    #[error("ledger still contended after {MAX_CAS_ATTEMPTS} attempts")]
    Contended,
    /// No room for another worker entry.
    #[error("ledger has no room for another worker")]
    Full,
    /// The ledger announces newer limits than the decision was to be made under: nothing
    /// was written; load them and decide again.
    #[error("the ledger announces newer limits (seq {0})")]
    LimitsChanged(u64),
}

/// What a change did besides its own result, for stats and logs.
#[derive(Debug, PartialEq)]
pub struct Report<T> {
    /// The change's own result.
    pub value: T,
    /// Slots of dead VMs given back during this change.
    pub reclaimed: u64,
    /// Write attempts lost to concurrent writers.
    pub cas_retries: u32,
    /// The stored record did not parse and was started afresh.
    pub reset_corrupt: bool,
    /// The latest allowance `seq` announced in the ledger (see [`Ledger::limits_seq`]).
    pub limits_seq: u64,
    /// The adaptive window this change closed, if any.
    pub window: Option<ClosedWindow>,
    /// This change found a record of another format version and moved this VM to the
    /// gate's own key (once per VM).
    pub diverted: bool,
    /// The wake-up queues of VMs whose waiters this change handed slots to.
    pub wake: Vec<u32>,
    /// The pressure after this change (for `retry-after`).
    pub pressure: Pressure,
    /// What this change adds to the in-flight gauges (`None` when it wrote nothing).
    pub gauges: Option<GaugeDeltas>,
}

impl<T> Report<T> {
    /// A report of a change that wrote nothing.
    fn nothing(value: T) -> Self {
        Self {
            value,
            reclaimed: 0,
            cas_retries: 0,
            reset_corrupt: false,
            limits_seq: 0,
            window: None,
            diverted: false,
            wake: Vec::new(),
            pressure: Pressure::default(),
            gauges: None,
        }
    }

    /// The same report with its value changed by `f`.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Report<U> {
        Report {
            value: f(self.value),
            reclaimed: self.reclaimed,
            cas_retries: self.cas_retries,
            reset_corrupt: self.reset_corrupt,
            limits_seq: self.limits_seq,
            window: self.window,
            diverted: self.diverted,
            wake: self.wake,
            pressure: self.pressure,
            gauges: self.gauges,
        }
    }
}

/// The gate itself: where the ledger lives and how long a VM's lease is.
#[derive(Debug, Clone)]
pub struct Gate {
    key: String,
    /// Where a VM goes when `key` holds a record it cannot read: this build's own key.
    own_key: String,
    lease_ms: u64,
    /// Adaptive limits: the algorithm and the bounds (`min_inflight`, `max_inflight`).
    adaptive: Option<(AdaptiveConfig, u32, u32)>,
    /// The bounded wait, when on.
    queue: Option<QueueConfig>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(LEDGER_KEY, DEFAULT_LEASE_MS)
    }
}

impl Gate {
    /// A gate on `key` whose VMs expire after `lease_ms` without a sign of life.
    pub fn new(key: &str, lease_ms: u64) -> Self {
        Self {
            key: key.to_owned(),
            own_key: format!("{key}.build-{}", env!("CARGO_PKG_VERSION")),
            lease_ms,
            adaptive: None,
            queue: None,
        }
    }

    /// Turns the bounded wait on.
    #[must_use]
    pub fn with_queue(mut self, queue: Option<QueueConfig>) -> Self {
        self.queue = queue;
        self
    }

    /// Turns adaptive limits on, within `min ..= max`.
    #[must_use]
    pub fn with_adaptive(mut self, config: Option<AdaptiveConfig>, min: u32, max: u32) -> Self {
        self.adaptive = config.map(|c| (c, min.max(1), max.max(min.max(1))));
        self
    }

    /// Writes an empty ledger unless one exists. Called when a VM is configured: the main
    /// thread's VM is configured before any worker serves, so the first write of the key
    /// (the one write that cannot be a compare-and-swap) never races with admissions.
    pub fn initialize(&self, store: &impl SharedData) -> Result<(), GateError> {
        if store.get(&self.key)?.0.is_none() {
            store.set(&self.key, &Ledger::default().encode(), None)?;
        }
        Ok(())
    }

    /// Takes a slot if `rule` admits `seat`. `rule` must be pure, since it runs again
    /// whenever a concurrent write forces a retry. `limits_seq` is the allowance the caller's
    /// limits were built for: when the ledger announces a newer one, nothing is written and
    /// [`GateError::LimitsChanged`] says so (no request is decided under limits another worker
    /// already replaced). `ceiling` is the limit before the adaptive one (the configured or
    /// fleet limit): a `wip_limit` rejection counts as demand above the adaptive limit only
    /// when that limit is the one that binds. With a `spot` and the queue on, a request the
    /// limit turns away waits instead, while fewer than `max_waiting` do.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        now_ms: u64,
        limits_seq: Option<u64>,
        ceiling: u32,
        seat: &Seat,
        rule: &dyn SeatRule,
        spot: Option<Spot>,
    ) -> Result<Report<Admission>, GateError> {
        let report = self.update_maybe(store, worker, now_ms, Some(rule), |ledger, current| {
            if limits_seq.is_some_and(|seq| ledger.limits_seq() > seq) {
                return Err(GateError::LimitsChanged(ledger.limits_seq()));
            }
            let (id, registered) = match current.filter(|id| ledger.touch(*id, now_ms)) {
                Some(id) => (id, false),
                None => (ledger.register(now_ms).ok_or(GateError::Full)?, true),
            };
            let decision = match rule.decide(ledger, seat) {
                Ok(keys) => {
                    ledger.acquire(id, &keys, now_ms);
                    Ok(keys)
                }
                Err(reason) => {
                    let full = reason == RejectReason::WipLimit;
                    let demand = full && ledger.adaptive_limit().is_some_and(|a| a <= ceiling);
                    match (self.queue, spot) {
                        (Some(queue), Some(spot))
                            if full
                                && ledger.waiting() + ledger.grants().len()
                                    < usize::try_from(queue.max_waiting).unwrap_or(usize::MAX) =>
                        {
                            ledger.turned_away(now_ms);
                            ledger.note_rejected(u32::from(demand));
                            ledger.push_waiter(Waiter {
                                worker: id,
                                token: spot.token,
                                queue: spot.queue,
                                seat: *seat,
                                since_ms: now_ms,
                                deadline_ms: now_ms.saturating_add(queue.timeout_ms),
                            });
                            Err(None)
                        }
                        _ => Err(Some((reason, demand))),
                    }
                }
            };
            // A rejection takes nothing: it need not write the ledger (under a flood, the
            // releases would otherwise compete with every rejection's write).
            let must_write = registered || !matches!(decision, Err(Some(_)));
            Ok(((id, decision), must_write))
        })?;
        if let Err(Some((reason, demand))) = &report.value.1 {
            if *reason == RejectReason::WipLimit {
                worker.note_unwritten(*demand, now_ms);
            }
        }
        let own_key = worker.diverted.get();
        Ok(report.map(|(id, decision)| {
            worker.current.set(Some(id));
            match decision {
                Ok(keys) => Admission::Admitted(Permit {
                    worker: id,
                    keys,
                    own_key,
                }),
                Err(Some((reason, _))) => Admission::Rejected(reason),
                Err(None) => Admission::Waiting,
            }
        }))
    }

    /// [`Gate::admit`] with the Envoy-wide limit as the only rule, and no wait.
    pub fn admit_within(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        limit: u32,
        now_ms: u64,
    ) -> Result<Report<Admission>, GateError> {
        let seat = Seat {
            tenant: PartitionKey(0),
            class: None,
        };
        let rule = |ledger: &Ledger, _: &Seat| {
            if ledger.total() < u64::from(limit) {
                Ok(Vec::new())
            } else {
                Err(RejectReason::WipLimit)
            }
        };
        self.admit(store, worker, now_ms, None, limit, &seat, &rule, None)
    }

    /// Picks up the slots handed to this VM's waiters. `waits` says whether a token still
    /// waits here: its slot comes back as a permit; a slot whose waiter left meanwhile is
    /// given back in the same write. Reads only, when nothing was handed over.
    pub fn claim(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
        waits: impl Fn(u32) -> bool,
    ) -> Result<Report<Vec<(u32, Permit)>>, GateError> {
        let Some(id) = worker.current.get() else {
            return Ok(Report::nothing(Vec::new()));
        };
        let (bytes, _) = store.get(self.key_of(worker))?;
        let handed = bytes
            .and_then(|b| Ledger::decode(&b).ok())
            .is_some_and(|l| l.has_grants_for(id));
        if !handed {
            return Ok(Report::nothing(Vec::new()));
        }
        let own_key = worker.diverted.get();
        self.update(store, worker, now_ms, rule, |ledger, _| {
            let mut permits = Vec::new();
            for grant in ledger.take_grants_of(id) {
                if waits(grant.token) {
                    permits.push((
                        grant.token,
                        Permit {
                            worker: grant.worker,
                            keys: grant.keys,
                            own_key,
                        },
                    ));
                } else {
                    ledger.release(grant.worker, &grant.keys, now_ms);
                }
            }
            Ok(permits)
        })
    }

    /// Takes a wait back (its deadline came, or its client left). If a slot had been handed
    /// to it meanwhile, `keep` says whether to take the slot (the request goes ahead after
    /// all) or to give it back in the same write.
    pub fn withdraw(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        token: u32,
        keep: bool,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
    ) -> Result<Report<Withdrawal>, GateError> {
        let Some(id) = worker.current.get() else {
            return Ok(Report::nothing(Withdrawal::Gone));
        };
        let own_key = worker.diverted.get();
        self.update(store, worker, now_ms, rule, |ledger, _| {
            if ledger.take_waiter(id, token) {
                if keep {
                    // Its deadline came: it is turned away now.
                    ledger.turned_away(now_ms);
                }
                return Ok(Withdrawal::Withdrawn);
            }
            Ok(match ledger.take_grant(id, token) {
                Some(keys) if keep => Withdrawal::Granted(Permit {
                    worker: id,
                    keys,
                    own_key,
                }),
                Some(keys) => {
                    ledger.release(id, &keys, now_ms);
                    Withdrawal::GivenBack
                }
                None => Withdrawal::Gone,
            })
        })
    }

    /// Gives the permit's slot back. On failure the release is owed and paid by the next
    /// successful write of this worker (a heartbeat at the latest), so it is never lost.
    pub fn release(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        permit: Permit,
        finish: Option<Finish>,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
    ) -> Result<Report<()>, GateError> {
        worker.owed.borrow_mut().push((permit, finish));
        self.update(store, worker, now_ms, rule, |_, _| Ok(()))
    }

    /// A sign of life from this worker, and the chance to reclaim dead VMs' slots and to pay
    /// owed releases while no request comes. Returns the in-flight total.
    pub fn heartbeat(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
    ) -> Result<Report<u64>, GateError> {
        self.update(store, worker, now_ms, rule, |ledger, current| {
            if let Some(id) = current {
                ledger.touch(id, now_ms);
            }
            Ok(ledger.total())
        })
    }

    /// Announces a new allowance to every worker: their next admission sees `seq`.
    pub fn publish_limits(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        seq: u64,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
    ) -> Result<Report<()>, GateError> {
        self.update(store, worker, now_ms, rule, |ledger, _| {
            ledger.publish_limits(seq);
            Ok(())
        })
    }

    /// Reads the in-flight total without writing.
    pub fn inflight(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
    ) -> Result<u64, GateError> {
        let (bytes, _) = store.get(self.key_of(worker))?;
        Ok(bytes
            .and_then(|b| Ledger::decode(&b).ok())
            .map_or(0, |l| l.total()))
    }

    fn key_of(&self, worker: &WorkerHandle) -> &str {
        if worker.diverted.get() {
            &self.own_key
        } else {
            &self.key
        }
    }

    /// The compare-and-swap loop. `change` must be pure: it may run several times. With the
    /// queue on and a `rule`, every write also hands the slots it leaves free to waiters.
    fn update<T>(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
        mut change: impl FnMut(&mut Ledger, Option<WorkerId>) -> Result<T, GateError>,
    ) -> Result<Report<T>, GateError> {
        self.update_maybe(store, worker, now_ms, rule, |ledger, current| {
            change(ledger, current).map(|value| (value, true))
        })
    }

    /// [`Gate::update`] for a change that may need no write: `change` says whether it
    /// changed the ledger. Nothing is written when neither it nor the housekeeping (dead VMs,
    /// owed releases, a closed window, hand-offs, rejections told late) changed anything.
    fn update_maybe<T>(
        &self,
        store: &impl SharedData,
        worker: &WorkerHandle,
        now_ms: u64,
        rule: Option<&dyn SeatRule>,
        mut change: impl FnMut(&mut Ledger, Option<WorkerId>) -> Result<(T, bool), GateError>,
    ) -> Result<Report<T>, GateError> {
        let mut diverted = false;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let (bytes, cas) = store.get(self.key_of(worker))?;
            let (mut ledger, reset_corrupt) = match bytes.as_deref().map(Ledger::decode) {
                None => (Ledger::default(), false),
                Some(Ok(ledger)) => (ledger, false),
                Some(Err(LedgerError::Version(_))) if !worker.diverted.get() => {
                    // Another build's record: never overwritten; this VM moves to its own key,
                    // where it registers anew. What it held there stays there: its permits
                    // give nothing back in the new ledger.
                    worker.diverted.set(true);
                    worker.current.set(None);
                    worker.owed.borrow_mut().retain(|(p, _)| p.own_key);
                    diverted = true;
                    continue;
                }
                Some(Err(_)) => (Ledger::default(), true),
            };
            // First: a jump of the clock moves every stored time before ages are judged.
            let jumped = ledger.absorb_clock(now_ms).is_some();
            let reclaimed = ledger.expire(now_ms, self.lease_ms);
            let adaptive = self.adaptive.as_ref();
            let window = ledger.roll_adaptive(
                adaptive.map(|(c, _, _)| c),
                adaptive.map_or(1, |a| a.1),
                adaptive.map_or(u32::MAX, |a| a.2),
                now_ms,
            );
            let own_key = worker.diverted.get();
            for (permit, finish) in worker.owed.borrow().iter() {
                if permit.own_key == own_key && ledger.release(permit.worker, &permit.keys, now_ms)
                {
                    if let Some(f) = finish {
                        ledger.record_finish(f.latency_us, f.outcome);
                    }
                }
            }
            let unwritten = worker.unwritten.get();
            if let Some(since_ms) = unwritten.since_ms {
                ledger.turned_away(since_ms);
                ledger.turned_away(unwritten.last_ms);
                ledger.note_rejected(unwritten.demand);
            }
            let (value, changed) = change(&mut ledger, worker.current.get())?;
            let wake = match (&self.queue, rule) {
                (Some(queue), Some(rule)) if ledger.waiting() > 0 => {
                    ledger.hand_off(queue, rule, now_ms)
                }
                _ => Vec::new(),
            };
            let stale_unwritten = unwritten
                .since_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= UNWRITTEN_MAX_AGE_MS);
            let write = changed
                || jumped
                || bytes.is_none()
                || reset_corrupt
                || diverted
                || reclaimed > 0
                || window.is_some()
                || !wake.is_empty()
                || !worker.owed.borrow().is_empty()
                || stale_unwritten;
            if !write {
                return Ok(Report {
                    cas_retries: attempt,
                    limits_seq: ledger.limits_seq(),
                    pressure: ledger.pressure(now_ms),
                    ..Report::nothing(value)
                });
            }
            let gauges = ledger.take_gauge_deltas();
            match store.set(self.key_of(worker), &ledger.encode(), cas) {
                Ok(()) => {
                    worker.owed.borrow_mut().clear();
                    worker.unwritten.set(Unwritten::default());
                    return Ok(Report {
                        value,
                        reclaimed,
                        cas_retries: attempt,
                        reset_corrupt,
                        limits_seq: ledger.limits_seq(),
                        window,
                        diverted,
                        wake,
                        pressure: ledger.pressure(now_ms),
                        gauges: Some(gauges),
                    });
                }
                Err(CasError::Mismatch) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(GateError::Contended)
    }
}
