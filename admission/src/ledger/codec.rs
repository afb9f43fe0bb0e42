//! The ledger's binary record in shared data, and the key it lives under. The key carries the
//! format version, both derived from one number, so VMs of two builds with different formats
//! (a rolling upgrade) each use their own record instead of wiping each other's.

use thiserror::Error;

use super::{
    DrainMeter, Grant, Ledger, PartitionKey, Seat, Waiter, WorkerEntry, WorkerId, MAX_WORKERS,
};
use crate::adaptive::aimd::Aimd;
use crate::adaptive::gradient::Gradient;
use crate::adaptive::histogram::Histogram;
use crate::adaptive::knee::{Knee, Phase};
use crate::adaptive::{AlgorithmState, ChangeReason, LimitState, Window};
use crate::queue::MAX_WAITING_LIMIT;

/// The one number that names the record format; bump it with every change to the encoding.
macro_rules! format_version {
    () => {
        7
    };
}

/// The record format this build reads and writes.
pub const FORMAT_VERSION: u8 = format_version!();

/// Shared-data key of the ledger: the format version is part of the name.
pub const LEDGER_KEY: &str = concat!("wipgate.ledger.v", format_version!());

const HEADER_LEN: usize = 1 + 4 + 8 + 2;
const ENTRY_HEAD_LEN: usize = 4 + 4 + 8 + 2;
const PART_LEN: usize = 8 + 4;
#[cfg(test)]
const DRAIN_LEN: usize = 8 + 4 + 4 + 8 + 8;
const WAITER_LEN: usize = 4 + 4 + 4 + 8 + 8 + 8 + 8;

/// Why bytes read from shared data are not a ledger.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LedgerError {
    /// The record was written by a different format version: not ours to overwrite.
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
    /// Serialises the ledger: version, next id, limits seq, entry count, then each entry (id,
    /// in-flight, last seen, partition count, partitions), then the adaptive state, the
    /// waiters and grants, the drain meter, the latest time a write saw and what the gauges
    /// were given, all little-endian.
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
            write_parts(&mut out, &e.parts);
        }
        match &self.adaptive {
            None => out.push(0),
            Some((state, w)) => {
                out.push(1);
                write_state(&mut out, state);
                out.extend_from_slice(&w.start_ms.to_le_bytes());
                out.extend_from_slice(&w.errors.to_le_bytes());
                out.extend_from_slice(&w.rejected.to_le_bytes());
                out.extend_from_slice(&w.peak_inflight.to_le_bytes());
                out.extend_from_slice(&w.latency_sum_us.to_le_bytes());
                let buckets = w.latency.buckets();
                // At most 4 x 33 distinct buckets exist, so the count fits a byte.
                out.push(u8::try_from(buckets.len()).unwrap_or(u8::MAX));
                for (b, n) in buckets {
                    out.push(*b);
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        write_queue(&mut out, &self.waiters, &self.grants);
        write_drain(&mut out, &self.drain);
        out.extend_from_slice(&self.clock_ms.to_le_bytes());
        out.extend_from_slice(&self.gauged_total.to_le_bytes());
        // The gauged partitions are those with something in flight: bounded as `parts`.
        write_parts(&mut out, &self.gauged);
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
            let parts = read_parts(&mut r)?;
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
        let (waiters, grants) = read_queue(&mut r)?;
        let drain = read_drain(&mut r)?;
        let clock_ms = r.u64()?;
        let gauged_total = r.u64()?;
        let gauged = read_parts(&mut r)?;
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
            waiters,
            grants,
            drain,
            clock_ms,
            gauged_total,
            gauged,
        })
    }
}

/// A count, then (partition key, count) pairs: an entry's partitions, or the gauged ones.
fn write_parts(out: &mut Vec<u8>, parts: &[(PartitionKey, u32)]) {
    out.extend_from_slice(&len_u16(parts.len()).to_le_bytes());
    for (key, n) in parts {
        out.extend_from_slice(&key.0.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn read_parts(r: &mut Reader<'_>) -> Result<Vec<(PartitionKey, u32)>, LedgerError> {
    let count = usize::from(r.u16()?);
    if count * PART_LEN > r.remaining() {
        return Err(LedgerError::Length(r.bytes.len()));
    }
    (0..count)
        .map(|_| Ok((PartitionKey(r.u64()?), r.u32()?)))
        .collect()
}

/// The drain meter: window start, completions, rate, overload start, last turned away.
fn write_drain(out: &mut Vec<u8>, d: &DrainMeter) {
    out.extend_from_slice(&d.window_start_ms.to_le_bytes());
    out.extend_from_slice(&d.completed.to_le_bytes());
    out.extend_from_slice(&d.rate_mrps.to_le_bytes());
    out.extend_from_slice(&d.overloaded_since_ms.to_le_bytes());
    out.extend_from_slice(&d.turned_away_ms.to_le_bytes());
}

fn read_drain(r: &mut Reader<'_>) -> Result<DrainMeter, LedgerError> {
    Ok(DrainMeter {
        window_start_ms: r.u64()?,
        completed: r.u32()?,
        rate_mrps: r.u32()?,
        overloaded_since_ms: r.u64()?,
        turned_away_ms: r.u64()?,
    })
}

/// Waiters (count, then worker, token, queue, tenant, class or 0, since, deadline) and grants
/// (count, then worker, token, key count, keys). Both are bounded by `max_waiting`.
fn write_queue(out: &mut Vec<u8>, waiters: &[Waiter], grants: &[Grant]) {
    out.extend_from_slice(&len_u16(waiters.len()).to_le_bytes());
    for w in waiters {
        out.extend_from_slice(&w.worker.0.to_le_bytes());
        out.extend_from_slice(&w.token.to_le_bytes());
        out.extend_from_slice(&w.queue.to_le_bytes());
        out.extend_from_slice(&w.seat.tenant.0.to_le_bytes());
        out.extend_from_slice(&w.seat.class.map_or(0, |c| c.0).to_le_bytes());
        out.extend_from_slice(&w.since_ms.to_le_bytes());
        out.extend_from_slice(&w.deadline_ms.to_le_bytes());
    }
    out.extend_from_slice(&len_u16(grants.len()).to_le_bytes());
    for g in grants {
        out.extend_from_slice(&g.worker.0.to_le_bytes());
        out.extend_from_slice(&g.token.to_le_bytes());
        // A grant counts a request in a tenant and at most one class.
        out.push(u8::try_from(g.keys.len()).unwrap_or(u8::MAX));
        for k in &g.keys {
            out.extend_from_slice(&k.0.to_le_bytes());
        }
    }
}

fn read_queue(r: &mut Reader<'_>) -> Result<(Vec<Waiter>, Vec<Grant>), LedgerError> {
    let limit = usize::try_from(MAX_WAITING_LIMIT).unwrap_or(usize::MAX);
    let count = usize::from(r.u16()?);
    if count > limit || count * WAITER_LEN > r.remaining() {
        return Err(LedgerError::Inconsistent);
    }
    let mut waiters = Vec::with_capacity(count);
    for _ in 0..count {
        let worker = WorkerId(r.u32()?);
        let token = r.u32()?;
        let queue = r.u32()?;
        let tenant = PartitionKey(r.u64()?);
        let class = Some(r.u64()?).filter(|c| *c != 0).map(PartitionKey);
        waiters.push(Waiter {
            worker,
            token,
            queue,
            seat: Seat { tenant, class },
            since_ms: r.u64()?,
            deadline_ms: r.u64()?,
        });
    }
    let count = usize::from(r.u16()?);
    if count > limit {
        return Err(LedgerError::Inconsistent);
    }
    let mut grants = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let worker = WorkerId(r.u32()?);
        let token = r.u32()?;
        let nkeys = usize::from(r.u8()?);
        if nkeys * 8 > r.remaining() {
            return Err(LedgerError::Length(r.bytes.len()));
        }
        let keys = (0..nkeys)
            .map(|_| r.u64().map(PartitionKey))
            .collect::<Result<_, _>>()?;
        grants.push(Grant {
            worker,
            token,
            keys,
        });
    }
    Ok((waiters, grants))
}

/// The limit loop's state, then the algorithm's: a tag byte and its own fields.
fn write_state(out: &mut Vec<u8>, state: &LimitState) {
    out.extend_from_slice(&state.limit.to_le_bytes());
    out.extend_from_slice(&state.stable.to_le_bytes());
    out.push(state.reason.code());
    out.push(u8::from(state.slow_start));
    match state.algorithm {
        AlgorithmState::Aimd(Aimd) => out.push(0),
        AlgorithmState::Gradient(g) => {
            out.push(1);
            out.extend_from_slice(&g.long_rtt_us.to_le_bytes());
        }
        AlgorithmState::Knee(k) => {
            out.push(2);
            out.extend_from_slice(&k.no_load_us.to_le_bytes());
            out.extend_from_slice(&k.no_load_age.to_le_bytes());
            out.extend_from_slice(&k.delivered_mrps.to_le_bytes());
            out.extend_from_slice(&k.delivered_age.to_le_bytes());
            out.push(k.phase.code());
            out.extend_from_slice(&k.until_probe.to_le_bytes());
            out.extend_from_slice(&k.probe_base_mrps.to_le_bytes());
            out.extend_from_slice(&k.probe_base_us.to_le_bytes());
            out.extend_from_slice(&k.probe_base_limit.to_le_bytes());
            out.extend_from_slice(&k.dropped_from.to_le_bytes());
            out.extend_from_slice(&k.dropped_rate_mrps.to_le_bytes());
            out.push(k.drain_steps);
            out.push(u8::from(k.was_slow) | u8::from(k.probe_down_next) << 1);
        }
    }
}

fn read_state(r: &mut Reader<'_>) -> Result<LimitState, LedgerError> {
    let limit = r.u32()?;
    let stable = u16::from_le_bytes(r.take()?);
    let reason = ChangeReason::from_code(r.u8()?).ok_or(LedgerError::Inconsistent)?;
    let slow_start = r.u8()? != 0;
    let algorithm = match r.u8()? {
        0 => AlgorithmState::Aimd(Aimd),
        1 => AlgorithmState::Gradient(Gradient {
            long_rtt_us: r.u32()?,
        }),
        2 => AlgorithmState::Knee(
            Knee {
                no_load_us: r.u32()?,
                no_load_age: r.u16()?,
                delivered_mrps: r.u32()?,
                delivered_age: r.u16()?,
                phase: Phase::from_code(r.u8()?).ok_or(LedgerError::Inconsistent)?,
                until_probe: r.u16()?,
                probe_base_mrps: r.u32()?,
                probe_base_us: r.u32()?,
                probe_base_limit: r.u32()?,
                dropped_from: r.u32()?,
                dropped_rate_mrps: r.u32()?,
                drain_steps: r.u8()?,
                was_slow: false,
                probe_down_next: false,
            }
            .with_flags(r.u8()?),
        ),
        _ => return Err(LedgerError::Inconsistent),
    };
    Ok(LimitState {
        limit,
        stable,
        reason,
        slow_start,
        algorithm,
    })
}

fn read_adaptive(r: &mut Reader<'_>) -> Result<(LimitState, Window), LedgerError> {
    let state = read_state(r)?;
    let start_ms = r.u64()?;
    let (errors, rejected, peak_inflight) = (r.u32()?, r.u32()?, r.u32()?);
    let latency_sum_us = r.u64()?;
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
            latency_sum_us,
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
    use crate::adaptive::{AdaptiveConfig, Outcome};
    use proptest::prelude::*;

    #[test]
    fn the_key_names_the_format_version() {
        assert_eq!(LEDGER_KEY, format!("wipgate.ledger.v{FORMAT_VERSION}"));
        assert_eq!(Ledger::default().encode()[0], FORMAT_VERSION);
    }

    /// What follows the entries of a ledger without adaptive state or waiters: the adaptive
    /// tag, the two (zero) counts of waiters and grants, the drain meter, the clock and the
    /// (zero) gauged counts.
    const EMPTY_TAIL: usize = 1 + 2 + 2 + DRAIN_LEN + 8 + 8 + 2;

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
            Err(LedgerError::Length(HEADER_LEN + EMPTY_TAIL))
        );
        let mut dup = Ledger::default();
        dup.register(0);
        dup.publish_limits(5);
        assert_eq!(Ledger::decode(&dup.encode()).unwrap().limits_seq(), 5);
        let encoded = dup.encode();
        let entry = &encoded[HEADER_LEN..encoded.len() - EMPTY_TAIL];
        let mut bytes = encoded[..HEADER_LEN].to_vec();
        bytes[HEADER_LEN - 2] = 2;
        bytes.extend_from_slice(entry);
        bytes.extend_from_slice(entry);
        bytes.extend_from_slice(&encoded[encoded.len() - EMPTY_TAIL..]);
        assert_eq!(Ledger::decode(&bytes), Err(LedgerError::Inconsistent));
        let mut trailing = dup.encode();
        trailing.push(0);
        assert_eq!(
            Ledger::decode(&trailing),
            Err(LedgerError::Length(trailing.len()))
        );
    }

    #[test]
    fn adaptive_state_of_either_algorithm_round_trips() {
        for algorithm in ["aimd", "gradient", "knee"] {
            let mut l = Ledger::default();
            l.register(0);
            let config: AdaptiveConfig = serde_json::from_str(&format!(
                r#"{{"algorithm": "{algorithm}", "window_ms": 50}}"#
            ))
            .unwrap();
            l.roll_adaptive(Some(&config), 4, 40, 0);
            l.record_finish(12_000, Outcome::Success);
            l.note_rejected(1);
            assert_eq!(Ledger::decode(&l.encode()), Ok(l.clone()));
            l.roll_adaptive(Some(&config), 4, 40, 50);
            assert_eq!(Ledger::decode(&l.encode()), Ok(l.clone()));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Ledger::decode(&bytes);
        }
    }
}
