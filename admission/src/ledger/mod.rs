//! The Envoy-wide in-flight ledger: one small record in shared data, read and written whole
//! with compare-and-swap by every worker VM.
//!
//! Counts are kept per worker VM rather than as one number so that the slots of a VM that
//! dies (a trap, a reload) can be given back: a VM that has not been seen for the lease is
//! dropped from the ledger together with everything it held, its tenants' and classes'
//! shares included. Only partitions with something in flight are stored, so the record's
//! size follows the work in flight, never the number of tenants ever seen.

mod codec;
mod drain;
mod partition_key;
mod waiters;

use std::collections::BTreeMap;

pub use codec::{LedgerError, FORMAT_VERSION, LEDGER_KEY};
pub use drain::{DrainMeter, Pressure};
pub use partition_key::PartitionKey;
pub use waiters::{Grant, Seat, Waiter};

use crate::adaptive::knee::KneeEstimates;
use crate::adaptive::{
    AdaptiveConfig, AlgorithmState, Bounds, ChangeReason, LimitState, Outcome, Sample, Window,
};

/// Identifies one worker VM's entry. Ids are never reused within a ledger, so a permit taken
/// under an entry that was later reclaimed can never release a slot of a newer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub u32);

/// One worker VM's share of the in-flight count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntry {
    /// The entry's id.
    pub id: WorkerId,
    /// Requests this VM admitted and has not released yet.
    pub inflight: u32,
    /// Last time (ms since the epoch) this VM wrote the ledger or sent a heartbeat.
    pub last_seen_ms: u64,
    /// This VM's in-flight per partition; only non-zero counts are kept.
    pub parts: Vec<(PartitionKey, u32)>,
}

impl WorkerEntry {
    fn add(&mut self, key: PartitionKey) {
        match self.parts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.parts.push((key, 1)),
        }
    }

    fn remove(&mut self, key: PartitionKey) {
        if let Some(i) = self.parts.iter().position(|(k, _)| *k == key) {
            self.parts[i].1 = self.parts[i].1.saturating_sub(1);
            if self.parts[i].1 == 0 {
                self.parts.swap_remove(i);
            }
        }
    }
}

/// A window that has too few finished requests for its algorithm stays open up to this
/// many times its length.
const MAX_WINDOW_STRETCH: u64 = 20;

/// At most this many worker entries; bounds the record whatever happens to the VMs.
pub const MAX_WORKERS: usize = 1024;

/// The whole ledger. Invariant: entry ids are unique and all below `next_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    next_id: u32,
    /// The `seq` of the latest control-service allowance: every admission reads the ledger
    /// anyway, so this is how workers learn, at no extra cost, that new limits are out.
    limits_seq: u64,
    entries: Vec<WorkerEntry>,
    /// The adaptive limit's state and the window being measured, when `adaptive` is on.
    adaptive: Option<(LimitState, Window)>,
    /// Requests waiting for a slot (the bounded queue), oldest first.
    waiters: Vec<Waiter>,
    /// Slots handed to waiters, not yet picked up by their VM.
    grants: Vec<Grant>,
    /// Completion rate and overload age, for `retry-after`.
    drain: DrainMeter,
    /// The latest time a write saw (ms since the epoch; 0 before the first): how a jump of
    /// the clock is told from time passing (see [`crate::clock`]).
    clock_ms: u64,
    /// What this ledger has added to the host's in-flight gauges so far: in total, and per
    /// partition (non-zero only). Each write adds the difference to what it holds now, in
    /// the same compare-and-swap, so the gauges follow the ledger exactly once per change
    /// and the ledgers of several configurations in one Envoy add up.
    gauged_total: u64,
    gauged: Vec<(PartitionKey, u32)>,
}

/// What one write of the ledger adds to the in-flight gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GaugeDeltas {
    /// To the Envoy-wide gauge.
    pub total: i64,
    /// Per partition (only those that changed).
    pub parts: Vec<(PartitionKey, i64)>,
}

/// A window that closed during a ledger change: what it measured, and the limit after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClosedWindow {
    /// The window's summary.
    pub sample: Sample,
    /// The adaptive limit after it.
    pub limit: u32,
    /// Why the limit changed, if it did.
    pub change: Option<ChangeReason>,
    /// Why the limit last changed (for the reason gauge).
    pub reason: ChangeReason,
    /// The knee algorithm's estimates after it, when that algorithm runs.
    pub estimates: Option<KneeEstimates>,
}

impl Ledger {
    /// Requests in flight through all worker VMs together.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.inflight)).sum()
    }

    /// In-flight per partition, all worker VMs together (only non-zero counts).
    pub fn partition_totals(&self) -> BTreeMap<PartitionKey, u64> {
        let mut totals = BTreeMap::new();
        for (key, n) in self.entries.iter().flat_map(|e| e.parts.iter()) {
            *totals.entry(*key).or_insert(0) += u64::from(*n);
        }
        totals
    }

    /// The `seq` of the latest allowance published.
    pub fn limits_seq(&self) -> u64 {
        self.limits_seq
    }

    /// Announces allowance `seq` (never goes back).
    pub fn publish_limits(&mut self, seq: u64) {
        self.limits_seq = self.limits_seq.max(seq);
    }

    /// The adaptive limit in force, if `adaptive` is on.
    pub fn adaptive_limit(&self) -> Option<u32> {
        self.adaptive.as_ref().map(|(state, _)| state.limit)
    }

    /// Turns adaptive limits on (cold start as the algorithm starts), and closes the current
    /// window when it is over, moving the limit within `min ..= max`. Without a `config` it
    /// changes nothing: the state is kept for the VMs that have one.
    pub fn roll_adaptive(
        &mut self,
        config: Option<&AdaptiveConfig>,
        min: u32,
        max: u32,
        now_ms: u64,
    ) -> Option<ClosedWindow> {
        // A VM without adaptive limits (another configuration of the same `scope`, or the
        // old one draining after an update) leaves the state to those that have them.
        let config = config?;
        let (state, window) = self.adaptive.get_or_insert_with(|| {
            (
                LimitState::cold(Bounds::new(min, max), config.algorithm),
                Window {
                    start_ms: now_ms,
                    ..Window::default()
                },
            )
        });
        let length = state.window_ms(config);
        if now_ms < window.start_ms.saturating_add(length) {
            return None;
        }
        if state.wants_more(window.latency.count())
            && now_ms
                < window
                    .start_ms
                    .saturating_add(length.saturating_mul(MAX_WINDOW_STRETCH))
        {
            // Too few finished requests to judge (a low limit in front of slow requests):
            // the window stays open, its rate still measured over its real length.
            return None;
        }
        let sample = window.sample(state.limit, now_ms);
        let change = state.update(&sample, config, min, max);
        *window = Window {
            start_ms: now_ms,
            ..Window::default()
        };
        Some(ClosedWindow {
            sample,
            limit: state.limit,
            change,
            reason: state.reason,
            estimates: match state.algorithm {
                AlgorithmState::Knee(k) => Some(k.estimates()),
                AlgorithmState::Aimd(_) | AlgorithmState::Gradient(_) => None,
            },
        })
    }

    /// `n` requests were refused because the limit was full: demand above the limit.
    pub fn note_rejected(&mut self, n: u32) {
        if let Some((_, w)) = &mut self.adaptive {
            w.rejected = w.rejected.saturating_add(n);
        }
    }

    /// Requests refused for a full limit in the window being measured (adaptive limits).
    pub fn window_rejected(&self) -> Option<u32> {
        self.adaptive.as_ref().map(|(_, w)| w.rejected)
    }

    /// An admitted request finished after `latency_us`, ending as `outcome`.
    pub fn record_finish(&mut self, latency_us: u64, outcome: Outcome) {
        if let Some((_, w)) = &mut self.adaptive {
            w.record(latency_us, outcome);
        }
    }

    /// The live worker entries.
    pub fn entries(&self) -> &[WorkerEntry] {
        &self.entries
    }

    /// Adds an entry for a new worker VM, or `None` when the ledger is full.
    pub fn register(&mut self, now_ms: u64) -> Option<WorkerId> {
        if self.entries.len() >= MAX_WORKERS {
            return None;
        }
        let id = WorkerId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.push(WorkerEntry {
            id,
            inflight: 0,
            last_seen_ms: now_ms,
            parts: Vec::new(),
        });
        Some(id)
    }

    fn entry_mut(&mut self, id: WorkerId, now_ms: u64) -> Option<&mut WorkerEntry> {
        let entry = self.entries.iter_mut().find(|e| e.id == id)?;
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        Some(entry)
    }

    /// Marks `id` as alive. Returns false when the entry was reclaimed.
    pub fn touch(&mut self, id: WorkerId, now_ms: u64) -> bool {
        self.entry_mut(id, now_ms).is_some()
    }

    /// Counts one more request of worker `id` in `keys`' partitions. The admission decision
    /// is made before, on [`Ledger::total`] and [`Ledger::partition_totals`].
    /// Returns false when the entry is gone.
    pub fn acquire(&mut self, id: WorkerId, keys: &[PartitionKey], now_ms: u64) -> bool {
        let Some(entry) = self.entry_mut(id, now_ms) else {
            return false;
        };
        entry.inflight = entry.inflight.saturating_add(1);
        keys.iter().for_each(|k| entry.add(*k));
        // The window's peak tells the adaptive limit whether the limit held work back; the
        // total is only summed when adaptive limits are on.
        if self.adaptive.is_some() {
            let total = u32::try_from(self.total()).unwrap_or(u32::MAX);
            if let Some((_, w)) = &mut self.adaptive {
                w.peak_inflight = w.peak_inflight.max(total);
            }
        }
        true
    }

    /// Gives back one slot of `id` and its partitions. Returns false (and changes nothing)
    /// when the entry was reclaimed meanwhile: its slots were already given back at once.
    pub fn release(&mut self, id: WorkerId, keys: &[PartitionKey], now_ms: u64) -> bool {
        let Some(entry) = self.entry_mut(id, now_ms) else {
            return false;
        };
        entry.inflight = entry.inflight.saturating_sub(1);
        keys.iter().for_each(|k| entry.remove(*k));
        self.drain.completed(now_ms);
        true
    }

    /// A request was turned away (rejected, or made to wait) for want of a slot.
    pub fn turned_away(&mut self, now_ms: u64) {
        self.drain.turned_away(now_ms);
    }

    /// The pressure a rejection now sees: the work ahead, the completion rate, the
    /// overload's age.
    pub fn pressure(&self, now_ms: u64) -> Pressure {
        let backlog = self.total() + (self.waiters.len() + self.grants.len()) as u64;
        self.drain.pressure(backlog, now_ms)
    }

    /// What the in-flight gauges need added to show what this ledger holds now, taken as
    /// added: call it once per write, in the change that is written.
    pub fn take_gauge_deltas(&mut self) -> GaugeDeltas {
        let delta = |now: u64, before: u64| {
            i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
        };
        let total = self.total();
        let totals = self.partition_totals();
        let mut parts = Vec::new();
        for (key, before) in &self.gauged {
            let now = totals.get(key).copied().unwrap_or(0);
            if now != u64::from(*before) {
                parts.push((*key, delta(now, u64::from(*before))));
            }
        }
        for (key, now) in &totals {
            if !self.gauged.iter().any(|(k, _)| k == key) {
                parts.push((*key, delta(*now, 0)));
            }
        }
        let deltas = GaugeDeltas {
            total: delta(total, self.gauged_total),
            parts,
        };
        self.gauged_total = total;
        self.gauged = totals
            .into_iter()
            .map(|(k, n)| (k, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        deltas
    }

    /// Keeps the ledger's times continuous across a jump of the clock: when `now_ms` is a
    /// jump from the latest time a write saw, every stored time moves by the jump, so ages
    /// (a VM's silence, a window's length, an overload's age, a wait) stay what they were.
    /// Returns the jump absorbed, if any. Call it first in every change.
    pub fn absorb_clock(&mut self, now_ms: u64) -> Option<i64> {
        let jump = crate::clock::jump(self.clock_ms, now_ms);
        if let Some(by) = jump {
            let shift = |t: &mut u64| *t = crate::clock::shift(*t, by);
            self.entries
                .iter_mut()
                .for_each(|e| shift(&mut e.last_seen_ms));
            if let Some((_, w)) = &mut self.adaptive {
                shift(&mut w.start_ms);
            }
            for w in &mut self.waiters {
                shift(&mut w.since_ms);
                shift(&mut w.deadline_ms);
            }
            let d = &mut self.drain;
            for t in [
                &mut d.window_start_ms,
                &mut d.overloaded_since_ms,
                &mut d.turned_away_ms,
            ] {
                shift(t);
            }
            self.clock_ms = now_ms;
        } else {
            self.clock_ms = self.clock_ms.max(now_ms);
        }
        jump
    }

    /// Drops the entries not seen for `lease_ms` and returns how many slots they held.
    pub fn expire(&mut self, now_ms: u64, lease_ms: u64) -> u64 {
        let mut reclaimed = 0;
        let before = self.entries.len();
        self.entries.retain(|e| {
            let alive = now_ms.saturating_sub(e.last_seen_ms) < lease_ms;
            if !alive {
                reclaimed += u64::from(e.inflight);
            }
            alive
        });
        if self.entries.len() != before {
            self.forget_waiters_of_the_dead();
        }
        reclaimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> [PartitionKey; 2] {
        [PartitionKey::tenant("acme"), PartitionKey::class("batch")]
    }

    #[test]
    fn counts_add_up_across_workers_and_partitions() {
        let mut l = Ledger::default();
        let a = l.register(0).unwrap();
        let b = l.register(0).unwrap();
        assert!(l.acquire(a, &keys(), 1));
        assert!(l.acquire(b, &keys(), 1));
        assert!(l.acquire(b, &[PartitionKey::tenant("other")], 1));
        assert_eq!(l.total(), 3);
        let totals = l.partition_totals();
        assert_eq!(totals[&PartitionKey::tenant("acme")], 2);
        assert_eq!(totals[&PartitionKey::class("batch")], 2);
        assert!(l.release(a, &keys(), 2));
        assert!(l.release(b, &keys(), 2));
        assert_eq!(l.partition_totals().len(), 1, "zero counts are dropped");
    }

    #[test]
    fn expired_worker_gives_back_its_slots_and_its_permits_become_no_ops() {
        let mut l = Ledger::default();
        let dead = l.register(0).unwrap();
        let live = l.register(0).unwrap();
        assert!(l.acquire(dead, &keys(), 0));
        assert!(l.acquire(dead, &keys(), 0));
        assert!(l.acquire(live, &keys(), 9_000));
        assert_eq!(l.expire(10_000, 10_000), 2);
        assert_eq!(l.total(), 1);
        assert_eq!(l.partition_totals()[&PartitionKey::tenant("acme")], 1);
        assert!(
            !l.release(dead, &keys(), 10_001),
            "a reclaimed entry releases nothing"
        );
        assert_eq!(l.total(), 1);
        let again = l.register(10_002).unwrap();
        assert_ne!(again, dead, "ids are never reused");
    }

    #[test]
    fn register_is_bounded() {
        let mut l = Ledger::default();
        for _ in 0..MAX_WORKERS {
            assert!(l.register(0).is_some());
        }
        assert!(l.register(0).is_none());
    }

    #[test]
    fn a_window_at_the_limit_counts_as_limited() {
        let mut l = Ledger::default();
        let id = l.register(0).unwrap();
        let config: AdaptiveConfig =
            serde_json::from_str(r#"{"algorithm": "aimd", "window_ms": 50}"#).unwrap();
        l.roll_adaptive(Some(&config), 4, 40, 0);
        l.record_finish(12_000, Outcome::Success);
        l.note_rejected(1);
        assert_eq!(l.adaptive_limit(), Some(4));
        let closed = l.roll_adaptive(Some(&config), 4, 40, 50).unwrap();
        assert_eq!((closed.sample.count, closed.sample.limited), (1, true));
        // A window without rejections still counts as limited when in flight reached the limit.
        for _ in 0..4 {
            assert!(l.acquire(id, &[], 60));
        }
        let closed = l.roll_adaptive(Some(&config), 4, 40, 100).unwrap();
        assert!(closed.sample.limited, "peak in flight at the limit of 4");
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(ops in proptest::collection::vec((0u8..4, 0u32..8, 0u64..100), 0..200)) {
            let mut l = Ledger::default();
            let mut ids = Vec::new();
            let mut held: Vec<(WorkerId, PartitionKey)> = Vec::new();
            for (op, pick, t) in ops {
                let id = ids.get(pick as usize % ids.len().max(1)).copied();
                match (op, id) {
                    (0, _) => ids.extend(l.register(t)),
                    (1, Some(id)) => {
                        let key = PartitionKey::tenant(&format!("t{}", pick % 3));
                        if l.acquire(id, &[key], t) {
                            held.push((id, key));
                        }
                    }
                    (2, _) if !held.is_empty() => {
                        let (id, key) = held.swap_remove(pick as usize % held.len());
                        l.release(id, &[key], t);
                    }
                    _ => { l.expire(t, 30); }
                }
                prop_assert_eq!(Ledger::decode(&l.encode()), Ok(l.clone()));
                let parts: u64 = l.partition_totals().values().sum();
                prop_assert_eq!(parts, l.total());
            }
        }

    }
}
