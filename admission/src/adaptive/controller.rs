//! The limit loop every algorithm shares. Pure: a closed window's [`Sample`] in, the next
//! limit out; the state lives in the ledger so every worker VM sees one limit. Errors pull
//! the limit down first; then the configured [`LimitAlgorithm`](super::LimitAlgorithm)
//! judges; increases wait for `stable_windows` healthy windows and double during the cold
//! start.

use super::algorithm::{AlgorithmState, Assessment, Bounds};
use super::config::{AdaptiveConfig, Algorithm};
use super::knee::{Phase, MIN_SAMPLES as KNEE_MIN_SAMPLES};
use super::window::Sample;

/// Why the limit last changed (the `wipgate.adaptive.reason.<reason>` gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// Started: AIMD and gradient at `min_inflight`, the knee at `max_inflight` (and again
    /// low when a flood met it before anything was measured).
    ColdStart,
    /// Healthy windows with demand above the limit.
    Increase,
    /// Latency over the target (AIMD).
    Latency,
    /// Errors over `max_error_rate`.
    Errors,
    /// The gradient of latencies pulled it down.
    Gradient,
    /// Knee: set to the estimated knee (most delivered x no-load latency).
    Knee,
    /// Knee: raised above the knee for one window to see whether more gets delivered.
    Probe,
    /// Knee: requests queued at the bottleneck; lowered to what the delivered rate needs.
    Queue,
    /// Knee: the no-load latency itself rose (a slower resource, not a queue): the limit goes
    /// back to where it was before the drop, the new latency becomes the no-load latency.
    Slower,
}

impl ChangeReason {
    /// Every reason, for defining stats up front.
    pub const ALL: [ChangeReason; 9] = [
        Self::ColdStart,
        Self::Increase,
        Self::Latency,
        Self::Errors,
        Self::Gradient,
        Self::Knee,
        Self::Probe,
        Self::Queue,
        Self::Slower,
    ];

    /// The stat name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ColdStart => "cold_start",
            Self::Increase => "increase",
            Self::Latency => "latency",
            Self::Errors => "errors",
            Self::Gradient => "gradient",
            Self::Knee => "knee",
            Self::Probe => "probe",
            Self::Queue => "queue",
            Self::Slower => "slower",
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
            Self::Knee => 5,
            Self::Probe => 6,
            Self::Queue => 7,
            Self::Slower => 8,
        }
    }

    /// From the wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// The loop's state, stored in the ledger. Invariant: `min <= limit <= max` of the bounds it
/// was last updated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The adaptive limit in force.
    pub limit: u32,
    /// Healthy windows in a row since the last change.
    pub stable: u16,
    /// Why it last changed.
    pub reason: ChangeReason,
    /// Still ramping up from the cold start (no decrease seen yet): increases double.
    pub slow_start: bool,
    /// What the configured algorithm remembers between windows.
    pub algorithm: AlgorithmState,
}

/// The limit after a multiplicative decrease, within the bounds.
pub fn backed_off(limit: u32, config: &AdaptiveConfig, bounds: Bounds) -> u32 {
    ((f64::from(limit) * config.backoff).floor() as u32).clamp(bounds.min, bounds.max)
}

impl LimitState {
    /// The cold start: AIMD and gradient at the floor, ramping up; the knee at the ceiling,
    /// so light load is never turned away while nothing is known yet.
    pub fn cold(bounds: Bounds, algorithm: Algorithm) -> Self {
        Self {
            limit: match algorithm {
                Algorithm::Knee => bounds.max,
                Algorithm::Aimd | Algorithm::Gradient => bounds.min,
            },
            stable: 0,
            reason: ChangeReason::ColdStart,
            slow_start: true,
            algorithm: AlgorithmState::fresh(algorithm),
        }
    }

    /// How long the window now being measured lasts: the configured length, shorter while
    /// the knee algorithm knows nothing yet (a flood at the start fills the ceiling only
    /// that long).
    pub fn window_ms(&self, config: &AdaptiveConfig) -> u64 {
        match self.algorithm {
            AlgorithmState::Knee(k) if k.phase != Phase::Steady => (config.window_ms() / 4).max(50),
            _ => config.window_ms(),
        }
    }

    /// Whether a window with `finished` requests is too thin for the algorithm to judge and
    /// should stay open longer (the knee needs a few; the others judge any window).
    pub fn wants_more(&self, finished: u64) -> bool {
        matches!(self.algorithm, AlgorithmState::Knee(_)) && finished < KNEE_MIN_SAMPLES
    }

    /// Feeds one closed window; returns the reason when the limit changed. Errors pull the
    /// limit down whatever the algorithm; otherwise the configured algorithm judges.
    pub fn update(
        &mut self,
        sample: &Sample,
        config: &AdaptiveConfig,
        min: u32,
        max: u32,
    ) -> Option<ChangeReason> {
        let bounds = Bounds::new(min, max);
        if self.algorithm.algorithm() != config.algorithm {
            // Reconfigured: the new algorithm starts fresh from the limit in force.
            self.algorithm = AlgorithmState::fresh(config.algorithm);
        }
        let before = self.limit.clamp(bounds.min, bounds.max);
        self.limit = before;
        if sample.count == 0 {
            return None;
        }
        let assessment = if sample.error_rate > config.max_error_rate {
            Assessment::Lower(backed_off(before, config, bounds), ChangeReason::Errors)
        } else {
            self.algorithm
                .as_algorithm()
                .assess(sample, before, config, bounds)
        };
        match assessment {
            Assessment::Set(next, reason) => {
                let next = next.clamp(bounds.min, bounds.max);
                if next == before {
                    return None;
                }
                self.limit = next;
                self.reason = reason;
                self.stable = 0;
                self.slow_start = false;
                Some(reason)
            }
            Assessment::Hold => None,
            Assessment::Lower(next, reason) if next < before => {
                self.limit = next;
                self.reason = reason;
                self.stable = 0;
                self.slow_start = false;
                Some(reason)
            }
            // Asked to fall but already at what it asks: neither a change nor a healthy window.
            Assessment::Lower(..) => None,
            Assessment::Healthy => self.maybe_increase(sample, config, bounds.max),
        }
    }

    /// A healthy window: counts towards stability and raises the limit when work was held
    /// back for `stable_windows` windows in a row.
    fn maybe_increase(
        &mut self,
        sample: &Sample,
        config: &AdaptiveConfig,
        max: u32,
    ) -> Option<ChangeReason> {
        self.stable = self.stable.saturating_add(1);
        if self.stable < config.stable_windows || !sample.limited || self.limit >= max {
            return None;
        }
        let step = if self.slow_start {
            self.limit
        } else {
            config.increase
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
            mean_us: p50,
            duration_ms: 1_000,
            peak_inflight: limit,
            rejected: 10,
        }
    }

    fn run(algorithm: Algorithm, capacity: u32, windows: usize) -> Vec<u32> {
        let c = cfg(algorithm);
        let mut s = LimitState::cold(Bounds::new(2, 500), algorithm);
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
        assert_eq!(
            LimitState::cold(Bounds::new(2, 500), Algorithm::Aimd).limit,
            2
        );
        assert!(trace.iter().any(|l| *l >= 32), "{trace:?}");
    }

    #[test]
    fn errors_back_off_at_once_and_increases_wait_for_stability() {
        let c = cfg(Algorithm::Aimd);
        let mut s = LimitState {
            limit: 100,
            ..LimitState::cold(Bounds::new(2, 500), Algorithm::Aimd)
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
            algorithm in prop_oneof![Just(Algorithm::Aimd), Just(Algorithm::Gradient), Just(Algorithm::Knee)],
            min in 1u32..20, span in 0u32..300,
            samples in proptest::collection::vec((0u64..200, 1u64..5_000_000, 0.0f64..1.0, any::<bool>()), 1..200),
        ) {
            let max = min + span;
            let c = cfg(algorithm);
            let mut s = LimitState::cold(Bounds::new(min, max), algorithm);
            for (count, p50, errors, limited) in samples {
                let sample = Sample { count, error_rate: errors, p50_us: p50, p90_us: p50, p99_us: p50, limited, mean_us: p50, duration_ms: 250, peak_inflight: max, rejected: u32::from(limited) * 10 };
                s.update(&sample, &c, min, max);
                prop_assert!(s.limit >= min && s.limit <= max, "{} not in {min}..={max}", s.limit);
            }
        }
    }
}
