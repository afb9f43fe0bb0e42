//! The Envoy-wide in-flight ledger: one small record in shared data, read and written whole
//! with compare-and-swap by every worker VM.
//!
//! Counts are kept per worker VM rather than as one number so that the slots of a VM that
//! dies (a trap, a reload) can be given back: a VM that has not been seen for the lease is
//! dropped from the ledger together with everything it held, its tenants' and classes'
//! shares included. Only partitions with something in flight are stored, so the record's
//! size follows the work in flight, never the number of tenants ever seen.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::adaptive::histogram::Histogram;
use crate::adaptive::{AdaptiveConfig, ChangeReason, LimitState, Outcome, Sample, Window};

/// Identifies one worker VM's entry. Ids are never reused within a ledger, so a permit taken
/// under an entry that was later reclaimed can never release a slot of a newer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub u32);

/// A tenant or a priority class, as a 64-bit hash of its name (the top bit says which), so
/// that a ledger entry has a fixed size whatever the names are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey(pub u64);

const CLASS_BIT: u64 = 1 << 63;

impl PartitionKey {
    /// The key of a tenant name.
    pub fn tenant(name: &str) -> Self {
        Self(fnv1a(name.as_bytes()) & !CLASS_BIT)
    }

    /// The key of a priority class name.
    pub fn class(name: &str) -> Self {
        Self(fnv1a(name.as_bytes()) | CLASS_BIT)
    }

    /// Whether this is a class's key (else a tenant's).
    pub fn is_class(self) -> bool {
        self.0 & CLASS_BIT != 0
    }
}

/// FNV-1a: small, stable across builds and platforms (the ledger is shared by VMs that may
/// run different builds during an upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

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

/// At most this many worker entries; bounds the record whatever happens to the VMs.
pub const MAX_WORKERS: usize = 1024;

const FORMAT_VERSION: u8 = 4;
const HEADER_LEN: usize = 1 + 4 + 8 + 2;
const ENTRY_HEAD_LEN: usize = 4 + 4 + 8 + 2;
const PART_LEN: usize = 8 + 4;

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
}

/// Why bytes read from shared data are not a ledger.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LedgerError {
    /// The record was written by a different format version.
    #[error("ledger format version {0} is not {FORMAT_VERSION}")]
    Version(u8),
    /// The record's length does not match its contents.
    #[error("ledger record is truncated or has trailing bytes ({0} bytes)")]
    Length(usize),
    /// Too many entries, or duplicate ids.
    #[error("ledger record is inconsistent")]
    Inconsistent,
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

    /// Turns adaptive limits on (cold start at `min`) or off, and closes the current window
    /// when it is over, moving the limit within `min ..= max`.
    pub fn roll_adaptive(
        &mut self,
        config: Option<&AdaptiveConfig>,
        min: u32,
        max: u32,
        now_ms: u64,
    ) -> Option<ClosedWindow> {
        let Some(config) = config else {
            self.adaptive = None;
            return None;
        };
        let (state, window) = self.adaptive.get_or_insert_with(|| {
            (
                LimitState::cold(min),
                Window {
                    start_ms: now_ms,
                    ..Window::default()
                },
            )
        });
        if now_ms < window.start_ms.saturating_add(config.window_ms) {
            return None;
        }
        let sample = window.sample(state.limit);
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
        })
    }

    /// A request was refused because the limit was full: demand above the limit.
    pub fn note_rejected(&mut self) {
        if let Some((_, w)) = &mut self.adaptive {
            w.rejected = w.rejected.saturating_add(1);
        }
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
        true
    }

    /// Drops the entries not seen for `lease_ms` and returns how many slots they held.
    pub fn expire(&mut self, now_ms: u64, lease_ms: u64) -> u64 {
        let mut reclaimed = 0;
        self.entries.retain(|e| {
            let alive = now_ms.saturating_sub(e.last_seen_ms) < lease_ms;
            if !alive {
                reclaimed += u64::from(e.inflight);
            }
            alive
        });
        reclaimed
    }

    /// Serialises the ledger: version, next id, limits seq, entry count, then each entry (id, in-flight,
    /// last seen, partition count, partitions), all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let parts: usize = self.entries.iter().map(|e| e.parts.len()).sum();
        let mut out =
            Vec::with_capacity(HEADER_LEN + ENTRY_HEAD_LEN * self.entries.len() + PART_LEN * parts);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.next_id.to_le_bytes());
        out.extend_from_slice(&self.limits_seq.to_le_bytes());
        // entries.len() <= MAX_WORKERS < u16::MAX, kept so by register().
        out.extend_from_slice(&len_u16(self.entries.len()).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.id.0.to_le_bytes());
            out.extend_from_slice(&e.inflight.to_le_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_le_bytes());
            out.extend_from_slice(&len_u16(e.parts.len()).to_le_bytes());
            for (key, n) in &e.parts {
                out.extend_from_slice(&key.0.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        match &self.adaptive {
            None => out.push(0),
            Some((state, w)) => {
                out.push(1);
                out.extend_from_slice(&state.limit.to_le_bytes());
                out.extend_from_slice(&state.stable.to_le_bytes());
                out.push(state.reason.code());
                out.push(u8::from(state.slow_start));
                out.extend_from_slice(&state.long_rtt_us.to_le_bytes());
                out.extend_from_slice(&w.start_ms.to_le_bytes());
                out.extend_from_slice(&w.errors.to_le_bytes());
                out.extend_from_slice(&w.rejected.to_le_bytes());
                out.extend_from_slice(&w.peak_inflight.to_le_bytes());
                let buckets = w.latency.buckets();
                // At most 4 x 33 distinct buckets exist, so the count fits a byte.
                out.push(u8::try_from(buckets.len()).unwrap_or(u8::MAX));
                for (b, n) in buckets {
                    out.push(*b);
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out
    }

    /// Parses what [`Ledger::encode`] wrote; refuses anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(LedgerError::Version(version));
        }
        let next_id = r.u32()?;
        let limits_seq = r.u64()?;
        let count = usize::from(r.u16()?);
        if count > MAX_WORKERS {
            return Err(LedgerError::Inconsistent);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let id = WorkerId(r.u32()?);
            let inflight = r.u32()?;
            let last_seen_ms = r.u64()?;
            let nparts = usize::from(r.u16()?);
            if nparts * PART_LEN > r.remaining() {
                return Err(LedgerError::Length(bytes.len()));
            }
            let mut parts = Vec::with_capacity(nparts);
            for _ in 0..nparts {
                parts.push((PartitionKey(r.u64()?), r.u32()?));
            }
            entries.push(WorkerEntry {
                id,
                inflight,
                last_seen_ms,
                parts,
            });
        }
        let adaptive = match r.u8()? {
            0 => None,
            1 => Some(read_adaptive(&mut r)?),
            _ => return Err(LedgerError::Inconsistent),
        };
        if r.remaining() != 0 {
            return Err(LedgerError::Length(bytes.len()));
        }
        let mut ids: Vec<u32> = entries.iter().map(|e| e.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != entries.len() {
            return Err(LedgerError::Inconsistent);
        }
        Ok(Self {
            next_id,
            limits_seq,
            entries,
            adaptive,
        })
    }
}

fn read_adaptive(r: &mut Reader<'_>) -> Result<(LimitState, Window), LedgerError> {
    let limit = r.u32()?;
    let stable = u16::from_le_bytes(r.take()?);
    let reason = ChangeReason::from_code(r.u8()?).ok_or(LedgerError::Inconsistent)?;
    let slow_start = r.u8()? != 0;
    let long_rtt_us = r.u32()?;
    let state = LimitState {
        limit,
        stable,
        reason,
        long_rtt_us,
        slow_start,
    };
    let start_ms = r.u64()?;
    let (errors, rejected, peak_inflight) = (r.u32()?, r.u32()?, r.u32()?);
    let n = r.u8()?;
    let mut buckets = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        buckets.push((r.u8()?, r.u32()?));
    }
    let latency = Histogram::from_buckets(buckets).ok_or(LedgerError::Inconsistent)?;
    Ok((
        state,
        Window {
            start_ms,
            errors,
            rejected,
            peak_inflight,
            latency,
        },
    ))
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], LedgerError> {
        let end = self
            .pos
            .checked_add(N)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(LedgerError::Length(self.bytes.len()))?;
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(out)
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn u8(&mut self) -> Result<u8, LedgerError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, LedgerError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, LedgerError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, LedgerError> {
        self.take().map(u64::from_le_bytes)
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
    fn tenant_and_class_keys_never_collide() {
        assert!(PartitionKey::class("x").is_class());
        assert!(!PartitionKey::tenant("x").is_class());
        assert_ne!(PartitionKey::class("x"), PartitionKey::tenant("x"));
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
    fn decode_refuses_garbage() {
        assert_eq!(Ledger::decode(&[]), Err(LedgerError::Length(0)));
        assert_eq!(
            Ledger::decode(&[9, 0, 0, 0, 0, 0, 0]),
            Err(LedgerError::Version(9))
        );
        let mut one_missing = Ledger::default().encode();
        one_missing[HEADER_LEN - 2] = 1;
        assert_eq!(
            Ledger::decode(&one_missing),
            Err(LedgerError::Length(HEADER_LEN + 1))
        );
        let mut dup = Ledger::default();
        dup.register(0);
        dup.publish_limits(5);
        assert_eq!(Ledger::decode(&dup.encode()).unwrap().limits_seq(), 5);
        let encoded = dup.encode();
        let entry = &encoded[HEADER_LEN..encoded.len() - 1];
        let mut bytes = encoded[..HEADER_LEN].to_vec();
        bytes[HEADER_LEN - 2] = 2;
        bytes.extend_from_slice(entry);
        bytes.extend_from_slice(entry);
        bytes.push(0);
        assert_eq!(Ledger::decode(&bytes), Err(LedgerError::Inconsistent));
        let mut adaptive = dup.clone();
        let config: AdaptiveConfig =
            serde_json::from_str(r#"{"algorithm": "aimd", "window_ms": 50}"#).unwrap();
        adaptive.roll_adaptive(Some(&config), 4, 40, 0);
        adaptive.record_finish(12_000, Outcome::Success);
        adaptive.note_rejected();
        assert_eq!(Ledger::decode(&adaptive.encode()), Ok(adaptive.clone()));
        assert_eq!(adaptive.adaptive_limit(), Some(4));
        let closed = adaptive.roll_adaptive(Some(&config), 4, 40, 50).unwrap();
        assert_eq!((closed.sample.count, closed.sample.limited), (1, true));
        // A window without rejections still counts as limited when in flight reached the limit.
        let id = adaptive.entries()[0].id;
        for _ in 0..4 {
            assert!(adaptive.acquire(id, &[], 60));
        }
        let closed = adaptive.roll_adaptive(Some(&config), 4, 40, 100).unwrap();
        assert!(closed.sample.limited, "peak in flight at the limit of 4");
        let mut trailing = dup.encode();
        trailing.push(0);
        assert_eq!(
            Ledger::decode(&trailing),
            Err(LedgerError::Length(trailing.len()))
        );
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

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Ledger::decode(&bytes);
        }
    }
}
