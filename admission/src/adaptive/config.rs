//! The `adaptive` configuration key: which limit algorithm, and its knobs.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Which algorithm moves the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Additive increase while healthy, multiplicative decrease on errors or latency over
    /// `latency_target_ms`.
    Aimd,
    /// The limit follows the ratio of the long-term no-load latency to the window's latency
    /// (the gradient / Vegas family).
    Gradient,
}

/// Validated `adaptive` settings. The limit stays within `min_inflight` … `max_inflight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// `aimd` or `gradient`.
    pub algorithm: Algorithm,
    /// Length of one measurement window.
    #[serde(default = "defaults::window_ms")]
    pub window_ms: u64,
    /// Healthy windows in a row before the limit may rise (it falls at once).
    #[serde(default = "defaults::stable_windows")]
    pub stable_windows: u16,
    /// Share of finished requests ending in 5xx, reset or timeout above which the limit falls.
    #[serde(default = "defaults::max_error_rate")]
    pub max_error_rate: f64,
    /// Multiplicative decrease factor (0-1).
    #[serde(default = "defaults::backoff")]
    pub backoff: f64,
    /// AIMD: the window's p90 latency above this makes the limit fall.
    #[serde(default = "defaults::latency_target_ms")]
    pub latency_target_ms: u64,
    /// AIMD: additive increase per step.
    #[serde(default = "defaults::increase")]
    pub increase: u32,
    /// Gradient: how much slower than no-load latency is still fine (≥ 1).
    #[serde(default = "defaults::tolerance")]
    pub tolerance: f64,
    /// Gradient: weight of a new target in the limit (0-1).
    #[serde(default = "defaults::smoothing")]
    pub smoothing: f64,
    /// Gradient: windows over which the no-load latency estimate rises again.
    #[serde(default = "defaults::long_windows")]
    pub long_windows: u32,
}

mod defaults {
    pub fn window_ms() -> u64 {
        1_000
    }
    pub fn stable_windows() -> u16 {
        3
    }
    pub fn max_error_rate() -> f64 {
        0.1
    }
    pub fn backoff() -> f64 {
        0.9
    }
    pub fn latency_target_ms() -> u64 {
        100
    }
    pub fn increase() -> u32 {
        1
    }
    pub fn tolerance() -> f64 {
        1.5
    }
    pub fn smoothing() -> f64 {
        0.2
    }
    pub fn long_windows() -> u32 {
        20
    }
}

impl AdaptiveConfig {
    /// Checks every knob; the error names the field under `adaptive.`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |f: &str, p: &str| Err(ConfigError::new(format!("adaptive.{f}"), p));
        if !(50..=60_000).contains(&self.window_ms) {
            return err("window_ms", "must be between 50 and 60000");
        }
        if self.stable_windows < 1 {
            return err("stable_windows", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return err("max_error_rate", "must be between 0 and 1");
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            return err("backoff", "must be between 0 and 1 (exclusive)");
        }
        if self.latency_target_ms < 1 {
            return err("latency_target_ms", "must be at least 1");
        }
        if self.increase < 1 {
            return err("increase", "must be at least 1");
        }
        if !(self.tolerance >= 1.0 && self.tolerance <= 100.0) {
            return err("tolerance", "must be between 1 and 100");
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return err("smoothing", "must be above 0 and at most 1");
        }
        if self.long_windows < 1 {
            return err("long_windows", "must be at least 1");
        }
        Ok(())
    }
}
