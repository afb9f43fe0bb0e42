//! AIMD: the limit falls by `backoff` when the window's p90 latency exceeds
//! `latency_target_ms`; otherwise the window is healthy and the loop raises the limit
//! additively. Remembers nothing between windows.

use super::algorithm::{Assessment, Bounds, LimitAlgorithm};
use super::config::AdaptiveConfig;
use super::controller::{backed_off, ChangeReason};
use super::window::Sample;

/// AIMD has no state of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aimd;

impl LimitAlgorithm for Aimd {
    fn assess(
        &mut self,
        sample: &Sample,
        limit: u32,
        config: &AdaptiveConfig,
        bounds: Bounds,
    ) -> Assessment {
        if sample.p90_us > config.latency_target_ms.saturating_mul(1_000) {
            Assessment::Lower(backed_off(limit, config, bounds), ChangeReason::Latency)
        } else {
            Assessment::Healthy
        }
    }
}
