//! The Envoy-wide in-flight ledger: one small record in shared data, read and written whole
//! with compare-and-swap by every worker VM.
//!
//! Counts are kept per worker VM rather than as one number so that the slots of a VM that
//! dies (a trap, a reload) can be given back: a VM that has not been seen for the lease is
//! dropped from the ledger together with everything it held.

use thiserror::Error;

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
}

/// At most this many worker entries; bounds the record whatever happens to the VMs.
pub const MAX_WORKERS: usize = 1024;

const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 2;
const ENTRY_LEN: usize = 4 + 4 + 8;

/// The whole ledger. Invariant: entry ids are unique and all below `next_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    next_id: u32,
    entries: Vec<WorkerEntry>,
}

/// Why bytes read from shared data are not a ledger.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LedgerError {
    /// The record was written by a different format version.
    #[error("ledger format version {0} is not {FORMAT_VERSION}")]
    Version(u8),
    /// The record's length does not match its header.
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
        });
        Some(id)
    }

    /// The entry of `id`, if it is still in the ledger.
    pub fn entry_mut(&mut self, id: WorkerId) -> Option<&mut WorkerEntry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// Marks `id` as alive. Returns false when the entry was reclaimed.
    pub fn touch(&mut self, id: WorkerId, now_ms: u64) -> bool {
        match self.entry_mut(id) {
            Some(entry) => {
                entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
                true
            }
            None => false,
        }
    }

    /// Takes one slot for `id` if the total stays within `limit`.
    /// Returns false when the limit is full or the entry is gone.
    pub fn acquire(&mut self, id: WorkerId, limit: u32, now_ms: u64) -> bool {
        if self.total() >= u64::from(limit) {
            return false;
        }
        match self.entry_mut(id) {
            Some(entry) => {
                entry.inflight = entry.inflight.saturating_add(1);
                entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
                true
            }
            None => false,
        }
    }

    /// Gives back one slot of `id`. Returns false (and changes nothing) when the entry was
    /// reclaimed meanwhile: its slots were already given back all at once.
    pub fn release(&mut self, id: WorkerId, now_ms: u64) -> bool {
        match self.entry_mut(id) {
            Some(entry) => {
                entry.inflight = entry.inflight.saturating_sub(1);
                entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
                true
            }
            None => false,
        }
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

    /// Serialises the ledger: version, next id, entry count, then fixed-size entries (LE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.next_id.to_le_bytes());
        // entries.len() <= MAX_WORKERS < u16::MAX, kept so by register().
        let count = u16::try_from(self.entries.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.id.0.to_le_bytes());
            out.extend_from_slice(&e.inflight.to_le_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_le_bytes());
        }
        out
    }

    /// Parses what [`Ledger::encode`] wrote; refuses anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let (header, body) = bytes
            .split_at_checked(HEADER_LEN)
            .ok_or(LedgerError::Length(bytes.len()))?;
        if header[0] != FORMAT_VERSION {
            return Err(LedgerError::Version(header[0]));
        }
        let next_id = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        let count = usize::from(u16::from_le_bytes([header[5], header[6]]));
        if count > MAX_WORKERS {
            return Err(LedgerError::Inconsistent);
        }
        if body.len() != count * ENTRY_LEN {
            return Err(LedgerError::Length(bytes.len()));
        }
        let entries: Vec<WorkerEntry> = body
            .chunks_exact(ENTRY_LEN)
            .map(|c| WorkerEntry {
                id: WorkerId(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                inflight: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                last_seen_ms: u64::from_le_bytes([
                    c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15],
                ]),
            })
            .collect();
        let mut ids: Vec<u32> = entries.iter().map(|e| e.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != entries.len() {
            return Err(LedgerError::Inconsistent);
        }
        Ok(Self { next_id, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn acquire_holds_the_limit_across_workers() {
        let mut l = Ledger::default();
        let a = l.register(0).unwrap();
        let b = l.register(0).unwrap();
        assert!(l.acquire(a, 2, 1));
        assert!(l.acquire(b, 2, 1));
        assert!(!l.acquire(a, 2, 1));
        assert!(!l.acquire(b, 2, 1));
        assert!(l.release(a, 2));
        assert!(l.acquire(b, 2, 2));
        assert_eq!(l.total(), 2);
    }

    #[test]
    fn expired_worker_gives_back_its_slots_and_its_permits_become_no_ops() {
        let mut l = Ledger::default();
        let dead = l.register(0).unwrap();
        let live = l.register(0).unwrap();
        assert!(l.acquire(dead, 10, 0));
        assert!(l.acquire(dead, 10, 0));
        assert!(l.acquire(live, 10, 9_000));
        assert_eq!(l.expire(10_000, 10_000), 2);
        assert_eq!(l.total(), 1);
        assert!(
            !l.release(dead, 10_001),
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
        assert_eq!(
            Ledger::decode(&[1, 0, 0, 0, 0, 1, 0]),
            Err(LedgerError::Length(7))
        );
        let mut dup = Ledger::default();
        dup.register(0);
        let mut bytes = dup.encode();
        bytes[5] = 2;
        bytes.extend_from_within(HEADER_LEN..);
        assert_eq!(Ledger::decode(&bytes), Err(LedgerError::Inconsistent));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(ops in proptest::collection::vec((0u8..4, 0u32..8, 0u64..100), 0..200)) {
            let mut l = Ledger::default();
            let mut ids = Vec::new();
            for (op, pick, t) in ops {
                match op {
                    0 => ids.extend(l.register(t)),
                    1 => if let Some(id) = ids.get(pick as usize % ids.len().max(1)) { l.acquire(*id, 50, t); },
                    2 => if let Some(id) = ids.get(pick as usize % ids.len().max(1)) { l.release(*id, t); },
                    _ => { l.expire(t, 30); }
                }
                prop_assert!(l.total() <= 50);
                prop_assert_eq!(Ledger::decode(&l.encode()), Ok(l.clone()));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Ledger::decode(&bytes);
        }
    }
}
