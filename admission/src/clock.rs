//! Jumps of the host's clock. Envoy gives proxy-wasm its wall clock, which an NTP step, a
//! suspended machine or an operator can move by any amount either way. Every time the core
//! keeps (a VM's last sign of life, an adaptive window's start, a wait's deadline, a sync
//! due time) is measured on that clock, so a jump is detected and absorbed rather than taken
//! as time that passed: a jump forward must not make live VMs look dead, a jump back must not
//! leave a window, a deadline or a sync waiting for the clock to come back.
//!
//! Detection rests on the heartbeat: every VM writes the ledger at least once a second, so
//! between two readings of one VM, or two writes of the ledger, the clock advances by about
//! a second at most. More than [`FORWARD_GAP_MS`] ahead, or [`BACKWARD_TOLERANCE_MS`] back,
//! is a jump. (An Envoy paused as a whole for longer looks the same, and is treated the same:
//! its VMs did not die.)

use std::cell::Cell;

/// Readings further back than this are a jump back (VMs read the clock before their
/// compare-and-swap loop, so a write may carry a time a little older than the last one).
pub const BACKWARD_TOLERANCE_MS: u64 = 2_000;

/// Readings further ahead than this are a jump forward: half the lease, so a live VM that
/// heartbeats every second is never older than the lease after any jump.
pub const FORWARD_GAP_MS: u64 = 5_000;

/// The jump between reading `last_ms` and reading `now_ms`, as the signed number of ms to
/// shift stored times by; `None` when the clock only advanced (or `last_ms` is unset, 0).
pub fn jump(last_ms: u64, now_ms: u64) -> Option<i64> {
    if last_ms == 0 {
        return None;
    }
    let back = now_ms.saturating_add(BACKWARD_TOLERANCE_MS) < last_ms;
    let ahead = now_ms > last_ms.saturating_add(FORWARD_GAP_MS);
    (back || ahead).then(|| signed_diff(now_ms, last_ms))
}

/// `a - b`, saturated to `i64`.
fn signed_diff(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        i64::try_from(b - a).map_or(i64::MIN, |d| -d)
    }
}

/// A stored time moved by a jump of `by` ms; 0 (unset) stays 0, and a time stays above 0.
pub fn shift(t: u64, by: i64) -> u64 {
    if t == 0 {
        0
    } else {
        t.saturating_add_signed(by).max(1)
    }
}

/// One VM's view of its clock: the last reading, and how many jumps it has seen (a request
/// admitted before a jump and released after has no latency to tell).
#[derive(Debug, Default)]
pub struct JumpWatch {
    last_ms: Cell<u64>,
    jumps: Cell<u32>,
}

impl JumpWatch {
    /// Takes a reading; returns the jump since the last one, if it was one.
    pub fn observe(&self, now_ms: u64) -> Option<i64> {
        let jump = jump(self.last_ms.get(), now_ms);
        if jump.is_some() {
            self.jumps.set(self.jumps.get().wrapping_add(1));
            self.last_ms.set(now_ms);
        } else {
            self.last_ms.set(self.last_ms.get().max(now_ms));
        }
        jump
    }

    /// Jumps seen so far (compare two values: equal means no jump in between).
    pub fn epoch(&self) -> u32 {
        self.jumps.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_either_way_are_told_from_time_passing() {
        assert_eq!(jump(0, 5), None, "no reading yet");
        assert_eq!(jump(10_000, 11_000), None);
        assert_eq!(jump(10_000, 9_500), None, "a reading a little older");
        assert_eq!(jump(10_000, 3_600_000), Some(3_590_000));
        assert_eq!(jump(3_600_000, 10_000), Some(-3_590_000));
        assert_eq!(shift(0, -5), 0);
        assert_eq!(shift(10, -50), 1);
        assert_eq!(shift(10, 50), 60);
        let watch = JumpWatch::default();
        assert_eq!(watch.observe(1_000_000), None);
        assert_eq!(watch.observe(1_000_900), None);
        assert_eq!(watch.observe(1_000_500), None, "within the tolerance");
        assert_eq!(watch.observe(400_000), Some(-600_900));
        assert_eq!(
            watch.observe(401_000),
            None,
            "the new time is the reference"
        );
        assert_eq!(watch.epoch(), 1);
    }
}
