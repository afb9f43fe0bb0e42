//! Gradient (the Vegas family): tracks the no-load latency and pulls the limit towards
//! `limit x tolerance x no-load / window p50 + sqrt(limit)` when the window is slower than the
//! no-load latency by more than the tolerance.

use super::algorithm::{Assessment, Bounds, LimitAlgorithm};
use super::config::AdaptiveConfig;
use super::controller::ChangeReason;
use super::window::Sample;

/// What the gradient remembers between windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gradient {
    /// The no-load latency estimate, µs (0: none yet).
    pub long_rtt_us: u32,
}

impl LimitAlgorithm for Gradient {
    fn assess(
        &mut self,
        sample: &Sample,
        limit: u32,
        config: &AdaptiveConfig,
        bounds: Bounds,
    ) -> Assessment {
        let short = sample.p50_us.max(1) as f64;
        let long = if self.long_rtt_us == 0 {
            short
        } else {
            f64::from(self.long_rtt_us)
        };
        // The no-load estimate follows drops at once. It rises slowly (a slower resource after
        // a hardware change), but only from windows that were not queueing — latency within
        // the tolerance — or taken at the floor, where there is no queue left to blame.
        let uncongested = short <= config.tolerance * long || limit <= bounds.min;
        let next_long = if short < long {
            short
        } else if uncongested {
            long + (short - long) / f64::from(config.long_windows)
        } else {
            long
        };
        self.long_rtt_us = next_long.clamp(1.0, f64::from(u32::MAX)) as u32;
        let current = f64::from(limit);
        let gradient = (config.tolerance * long / short).clamp(0.5, 1.0);
        let target = current * gradient + current.sqrt();
        if target >= current {
            return Assessment::Healthy;
        }
        let next = (current * (1.0 - config.smoothing) + target * config.smoothing).floor() as u32;
        Assessment::Lower(next.clamp(bounds.min, bounds.max), ChangeReason::Gradient)
    }
}
