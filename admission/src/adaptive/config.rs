//! The `adaptive` configuration key: which limit algorithm, and its knobs.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Which algorithm moves the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The default: estimates the bottleneck's knee by Little's law, the most it delivers
    /// times its no-load latency, and keeps the limit there (see `knee.rs`).
    #[default]
    Knee,
    /// Additive increase while healthy, multiplicative decrease on errors or latency over
    /// `latency_target_ms`.
    Aimd,
    /// The limit follows the ratio of the long-term no-load latency to the window's latency
    /// (the gradient / Vegas family).
    Gradient,
}

/// Validated `adaptive` settings. The limit stays within `min_inflight` … `max_inflight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// `knee` (the default), `aimd` or `gradient`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Length of one measurement window; see [`AdaptiveConfig::window_ms`] for the default.
    #[serde(default, rename = "window_ms")]
    pub window_ms_set: Option<u64>,
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
    /// Knee: how much slower than the no-load latency a window's mean latency may be before
    /// the window counts as queueing (0.25: 25% slower).
    #[serde(default = "defaults::queue_tolerance")]
    pub queue_tolerance: f64,
    /// Knee: windows at the knee between two probes above it.
    #[serde(default = "defaults::probe_every_windows")]
    pub probe_every_windows: u16,
    /// Knee: windows after which an estimate (the most delivered, the no-load latency) that
    /// was not confirmed may move towards what is measured now.
    #[serde(default = "defaults::memory_windows")]
    pub memory_windows: u16,
}

mod defaults {
    pub fn queue_tolerance() -> f64 {
        0.5
    }
    pub fn probe_every_windows() -> u16 {
        24
    }
    pub fn memory_windows() -> u16 {
        20
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
    /// Length of one measurement window: as configured, else 500 ms for `knee` (enough
    /// requests to see through noise, two windows to react within a second) and 1 s for the
    /// others.
    pub fn window_ms(&self) -> u64 {
        self.window_ms_set.unwrap_or(match self.algorithm {
            Algorithm::Knee => 500,
            Algorithm::Aimd | Algorithm::Gradient => 1_000,
        })
    }

    /// Checks every knob; the error names the field under `adaptive.`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |f: &str, p: &str| Err(ConfigError::new(format!("adaptive.{f}"), p));
        if !(50..=60_000).contains(&self.window_ms()) {
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
        if !(self.queue_tolerance > 0.0 && self.queue_tolerance <= 10.0) {
            return err("queue_tolerance", "must be above 0 and at most 10");
        }
        if self.probe_every_windows < 1 {
            return err("probe_every_windows", "must be at least 1");
        }
        if self.memory_windows < 2 {
            return err("memory_windows", "must be at least 2");
        }
        Ok(())
    }
}
