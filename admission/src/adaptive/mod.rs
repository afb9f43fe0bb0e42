//! Adaptive limits: the limit follows the constraint's measured health. Latencies and
//! outcomes of admitted requests are accumulated Envoy-wide in the ledger per window; when a
//! window closes, an algorithm (AIMD or gradient) moves the limit within `min_inflight` …
//! `max_inflight`. It rises only after a stable stretch and falls at once.

pub mod config;
pub mod controller;
pub mod histogram;
pub mod window;

pub use config::{AdaptiveConfig, Algorithm};
pub use controller::{ChangeReason, LimitState};
pub use window::{Outcome, Sample, Window};
