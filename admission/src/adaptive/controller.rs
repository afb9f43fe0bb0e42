//! The limit algorithms and their shared state. Pure: a closed window's [`Sample`] in, the
//! next limit out; the state lives in the ledger so every worker VM sees one limit.

use super::config::{AdaptiveConfig, Algorithm};
use super::window::Sample;

/// Why the limit last changed (the `wipgate.adaptive.reason.<reason>` gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// Started at `min_inflight`.
    ColdStart,
    /// Healthy windows with demand above the limit.
    Increase,
    /// Latency over the target (AIMD).
    Latency,
    /// Errors over `max_error_rate`.
    Errors,
    /// The gradient of latencies pulled it down.
    Gradient,
}

impl ChangeReason {
    /// Every reason, for defining stats up front.
    pub const ALL: [ChangeReason; 5] = [
        Self::ColdStart,
        Self::Increase,
        Self::Latency,
        Self::Errors,
        Self::Gradient,
    ];

    /// The stat name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ColdStart => "cold_start",
            Self::Increase => "increase",
            Self::Latency => "latency",
            Self::Errors => "errors",
            Self::Gradient => "gradient",
        }
    }

    /// Wire code in the ledger.
    pub fn code(self) -> u8 {
        match self {
            Self::ColdStart => 0,
            Self::Increase => 1,
            Self::Latency => 2,
            Self::Errors => 3,
            Self::Gradient => 4,
        }
    }

    /// From the wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// The algorithms' state. Invariant: `min <= limit <= max` of the bounds it was last
/// updated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The adaptive limit in force.
    pub limit: u32,
    /// Healthy windows in a row since the last change.
    pub stable: u16,
    /// Why it last changed.
    pub reason: ChangeReason,
    /// Gradient: the no-load latency estimate, µs (0: none yet).
    pub long_rtt_us: u32,
    /// Still ramping up from the cold start (no decrease seen yet): increases double.
    pub slow_start: bool,
}

impl LimitState {
    /// The cold start: at the floor, ramping up.
    pub fn cold(min: u32) -> Self {
        Self {
            limit: min.max(1),
            stable: 0,
            reason: ChangeReason::ColdStart,
            long_rtt_us: 0,
            slow_start: true,
        }
    }

    /// Feeds one closed window; returns the reason when the limit changed.
    pub fn update(
        &mut self,
        sample: &Sample,
        cfg: &AdaptiveConfig,
        min: u32,
        max: u32,
    ) -> Option<ChangeReason> {
        let (min, max) = (min.max(1), max.max(min.max(1)));
        let before = self.limit.clamp(min, max);
        self.limit = before;
        if sample.count == 0 {
            return None;
        }
        let decrease =
            |limit: u32| ((f64::from(limit) * cfg.backoff).floor() as u32).clamp(min, max);
        let verdict = if sample.error_rate > cfg.max_error_rate {
            Some((decrease(before), ChangeReason::Errors))
        } else {
            match cfg.algorithm {
                Algorithm::Aimd if sample.p90_us > cfg.latency_target_ms.saturating_mul(1_000) => {
                    Some((decrease(before), ChangeReason::Latency))
                }
                Algorithm::Aimd => None,
                Algorithm::Gradient => self.gradient(sample, cfg, min, max),
            }
        };
        match verdict {
            Some((next, reason)) if next < before => {
                self.limit = next;
                self.reason = reason;
                self.stable = 0;
                self.slow_start = false;
                Some(reason)
            }
            Some(_) => None,
            None => self.maybe_increase(sample, cfg, max),
        }
    }

    /// Gradient: tracks the no-load latency and proposes a lower limit when the window's
    /// latency exceeds it by more than the tolerance.
    fn gradient(
        &mut self,
        sample: &Sample,
        cfg: &AdaptiveConfig,
        min: u32,
        max: u32,
    ) -> Option<(u32, ChangeReason)> {
        let short = sample.p50_us.max(1) as f64;
        let long = if self.long_rtt_us == 0 {
            short
        } else {
            f64::from(self.long_rtt_us)
        };
        // The no-load estimate follows drops at once. It rises slowly (a slower resource after
        // a hardware change), but only from windows that were not queueing — latency within
        // the tolerance — or taken at the floor, where there is no queue left to blame.
        let uncongested = short <= cfg.tolerance * long || self.limit <= min;
        let next_long = if short < long {
            short
        } else if uncongested {
            long + (short - long) / f64::from(cfg.long_windows)
        } else {
            long
        };
        self.long_rtt_us = next_long.clamp(1.0, f64::from(u32::MAX)) as u32;
        let limit = f64::from(self.limit);
        let gradient = (cfg.tolerance * long / short).clamp(0.5, 1.0);
        let target = limit * gradient + limit.sqrt();
        if target >= limit {
            return None;
        }
        let next = (limit * (1.0 - cfg.smoothing) + target * cfg.smoothing).floor() as u32;
        Some((next.clamp(min, max), ChangeReason::Gradient))
    }

    /// A healthy window: counts towards stability and raises the limit when work was held
    /// back for `stable_windows` windows in a row.
    fn maybe_increase(
        &mut self,
        sample: &Sample,
        cfg: &AdaptiveConfig,
        max: u32,
    ) -> Option<ChangeReason> {
        self.stable = self.stable.saturating_add(1);
        if self.stable < cfg.stable_windows || !sample.limited || self.limit >= max {
            return None;
        }
        let step = if self.slow_start {
            self.limit
        } else {
            cfg.increase
        };
        self.limit = self.limit.saturating_add(step.max(1)).min(max);
        self.stable = 0;
        self.reason = ChangeReason::Increase;
        Some(ChangeReason::Increase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(algorithm: Algorithm) -> AdaptiveConfig {
        serde_json::from_value(serde_json::json!({
            "algorithm": algorithm, "stable_windows": 2, "latency_target_ms": 75
        }))
        .unwrap()
    }

    /// A server that serves `capacity` at once in `base_ms`; beyond that requests queue,
    /// so latency grows with in-flight (a database with a bounded pool).
    fn simulated(limit: u32, capacity: u32, base_ms: u64, error_rate: f64) -> Sample {
        let factor = (f64::from(limit) / f64::from(capacity)).max(1.0);
        let p50 = (base_ms as f64 * factor * 1_000.0) as u64;
        Sample {
            count: 100,
            error_rate,
            p50_us: p50,
            p90_us: p50 * 11 / 10,
            p99_us: p50 * 12 / 10,
            limited: true,
        }
    }

    fn run(algorithm: Algorithm, capacity: u32, windows: usize) -> Vec<u32> {
        let c = cfg(algorithm);
        let mut s = LimitState::cold(2);
        (0..windows)
            .map(|_| {
                s.update(&simulated(s.limit, capacity, 50, 0.0), &c, 2, 500);
                s.limit
            })
            .collect()
    }

    #[test]
    fn both_converge_near_the_knee_of_the_simulated_server() {
        for algorithm in [Algorithm::Aimd, Algorithm::Gradient] {
            let trace = run(algorithm, 40, 300);
            let tail = &trace[200..];
            let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
            assert!(
                lo >= 20 && hi <= 80,
                "{algorithm:?} settled in {lo}..{hi}: {:?}",
                &trace[..40]
            );
        }
    }

    #[test]
    fn cold_start_ramps_up_from_the_floor() {
        let trace = run(Algorithm::Aimd, 40, 30);
        assert_eq!(LimitState::cold(2).limit, 2);
        assert!(trace.iter().any(|l| *l >= 32), "{trace:?}");
    }

    #[test]
    fn errors_back_off_at_once_and_increases_wait_for_stability() {
        let c = cfg(Algorithm::Aimd);
        let mut s = LimitState {
            limit: 100,
            ..LimitState::cold(2)
        };
        s.slow_start = false;
        assert_eq!(
            s.update(&simulated(100, 1_000, 10, 0.5), &c, 2, 500),
            Some(ChangeReason::Errors)
        );
        assert_eq!(s.limit, 90);
        let healthy = simulated(90, 1_000, 10, 0.0);
        assert_eq!(
            s.update(&healthy, &c, 2, 500),
            None,
            "one healthy window is not enough"
        );
        assert_eq!(s.update(&healthy, &c, 2, 500), Some(ChangeReason::Increase));
        assert_eq!(s.limit, 91);
        let idle = Sample {
            limited: false,
            ..healthy
        };
        assert_eq!(s.update(&idle, &c, 2, 500), None);
        assert_eq!(s.update(&idle, &c, 2, 500), None, "no demand, no increase");
    }

    proptest! {
        #[test]
        fn never_leaves_its_bounds(
            algorithm in prop_oneof![Just(Algorithm::Aimd), Just(Algorithm::Gradient)],
            min in 1u32..20, span in 0u32..300,
            samples in proptest::collection::vec((0u64..200, 1u64..5_000_000, 0.0f64..1.0, any::<bool>()), 1..200),
        ) {
            let max = min + span;
            let c = cfg(algorithm);
            let mut s = LimitState::cold(min);
            for (count, p50, errors, limited) in samples {
                let sample = Sample { count, error_rate: errors, p50_us: p50, p90_us: p50, p99_us: p50, limited };
                s.update(&sample, &c, min, max);
                prop_assert!(s.limit >= min && s.limit <= max, "{} not in {min}..={max}", s.limit);
            }
        }
    }
}
