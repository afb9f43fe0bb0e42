//! The `retry-after` of a rejection, computed from what the gate measures rather than fixed:
//! the time the work ahead takes to drain at the measured completion rate, plus a quarter of
//! how long the overload has lasted (the longer it lasts, the further clients back off),
//! stretched by a random 0-50% so that clients turned away together do not come back
//! together. Whole seconds, at least `retry_after_s` (the configured floor), at most
//! [`CAP_S`] (or the floor, if higher).

use crate::ledger::Pressure;

/// The most a computed `retry-after` asks a client to wait, in seconds.
pub const CAP_S: u32 = 30;

/// The `retry-after` for `pressure`; `jitter` is uniform in `0..1`.
pub fn retry_after_s(pressure: &Pressure, floor_s: u32, jitter: f64) -> u32 {
    let drain_s = if pressure.completed_per_s > 0.0 {
        pressure.backlog as f64 / pressure.completed_per_s
    } else {
        0.0
    };
    let base_s = drain_s + pressure.overloaded_for_ms as f64 / 1e3 / 4.0;
    let stretched = (base_s * (1.0 + 0.5 * jitter.clamp(0.0, 1.0))).ceil();
    let cap = CAP_S.max(floor_s);
    // `stretched` is finite and non-negative; the cast saturates.
    (stretched as u32).clamp(floor_s.max(1), cap)
}

/// A small random source for the jitter (SplitMix64, with the time of each draw mixed in so
/// that VMs and Envoys started alike still draw differently): the host's randomness is not
/// needed, only that rejections draw different values.
#[derive(Debug)]
pub struct Jitter(std::cell::Cell<u64>);

impl Jitter {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(std::cell::Cell::new(seed))
    }

    /// The next value, uniform in `0..1`; `now_us` is mixed in.
    pub fn next(&self, now_us: u64) -> f64 {
        let mut z = (self.0.get() ^ now_us).wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pressure(backlog: u64, per_s: f64, overloaded_for_ms: u64) -> Pressure {
        Pressure {
            backlog,
            completed_per_s: per_s,
            overloaded_for_ms,
        }
    }

    #[test]
    fn a_short_overload_asks_for_the_floor_a_long_one_for_more() {
        // 10 in flight and 20 waiting at 400/s drain in 75 ms: the floor.
        assert_eq!(retry_after_s(&pressure(30, 400.0, 500), 1, 0.0), 1);
        // 20 s of overload: 5 s more, up to 7.5 s with the jitter.
        assert_eq!(retry_after_s(&pressure(30, 400.0, 20_000), 1, 0.0), 6);
        assert_eq!(retry_after_s(&pressure(30, 400.0, 20_000), 1, 0.999), 8);
        // A slow drain: 1,000 requests ahead at 50/s is 20 s.
        assert_eq!(retry_after_s(&pressure(1_000, 50.0, 0), 1, 0.0), 20);
        assert_eq!(retry_after_s(&pressure(1_000, 5.0, 0), 1, 0.0), CAP_S);
        assert_eq!(
            retry_after_s(&pressure(0, 0.0, 0), 3, 0.5),
            3,
            "the configured floor"
        );
    }

    #[test]
    fn jitter_spreads_clients_over_the_seconds() {
        let j = Jitter::new(7);
        let values: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| retry_after_s(&pressure(0, 100.0, 16_000), 1, j.next(i)))
            .collect();
        // 16 s of overload: 4 s, stretched to 4-6 s; whole seconds up.
        assert_eq!(values, [5, 6].into_iter().collect());
    }

    proptest! {
        #[test]
        fn always_whole_seconds_within_floor_and_cap(
            backlog in any::<u64>(), per_s in 0.0f64..1e6, age in any::<u64>(),
            floor in 1u32..3_600, jitter in 0.0f64..1.0,
        ) {
            let s = retry_after_s(&pressure(backlog, per_s, age), floor, jitter);
            prop_assert!(s >= floor && s <= CAP_S.max(floor));
        }
    }
}
