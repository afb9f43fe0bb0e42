//! One VM's waiting room: which of its paused streams wait, where their stats go, and when
//! each must be answered.

use std::collections::BTreeMap;

use crate::labels::Labels;
use crate::partitions::Placement;

/// A paused stream of this VM, waiting for a slot.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// Where it is counted in the stats.
    pub labels: Labels,
    /// Where it would be counted in the ledger, and whose it is (for the rejection body).
    pub placement: Placement,
    /// When it started waiting (µs since the epoch).
    pub since_us: u64,
    /// When it is answered `503 queue_timeout` if no slot came (ms since the epoch).
    pub deadline_ms: u64,
}

/// The paused streams of one VM by their token (the stream's context id: unique in a VM).
#[derive(Debug, Default)]
pub struct WaitRoom {
    waiting: BTreeMap<u32, Waiting>,
}

impl WaitRoom {
    /// A stream starts waiting.
    pub fn enter(&mut self, token: u32, waiting: Waiting) {
        self.waiting.insert(token, waiting);
    }

    /// A stream stops waiting (slot, timeout or client gone); `None` if it was not waiting.
    pub fn leave(&mut self, token: u32) -> Option<Waiting> {
        self.waiting.remove(&token)
    }

    /// Whether `token` waits here.
    pub fn contains(&self, token: u32) -> bool {
        self.waiting.contains_key(&token)
    }

    /// Streams waiting here now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no stream waits here.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The earliest deadline, for the host's timer.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.waiting.values().map(|w| w.deadline_ms).min()
    }

    /// The clock jumped by `by_ms`: every wait keeps its age and its time left.
    pub fn shift(&mut self, by_ms: i64) {
        for w in self.waiting.values_mut() {
            w.deadline_ms = crate::clock::shift(w.deadline_ms, by_ms);
            w.since_us = crate::clock::shift(w.since_us, by_ms.saturating_mul(1_000));
        }
    }

    /// The tokens whose deadline has come.
    pub fn due(&self, now_ms: u64) -> Vec<u32> {
        self.waiting
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now_ms)
            .map(|(t, _)| *t)
            .collect()
    }
}
