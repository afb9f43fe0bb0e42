//! Adaptive limits: the limit follows the constraint's measured health. Latencies and
//! outcomes of admitted requests are accumulated Envoy-wide in the ledger per window; when a
//! window closes, the limit loop ([`controller`]) and the configured [`LimitAlgorithm`]
//! (the knee, the default, AIMD or gradient, one file each) move the limit within
//! `min_inflight` … `max_inflight`. Errors pull it down at once, whatever the algorithm.

pub mod aimd;
pub mod algorithm;
pub mod config;
pub mod controller;
pub mod gradient;
pub mod histogram;
pub mod knee;
pub mod window;

pub use algorithm::{AlgorithmState, Assessment, Bounds, LimitAlgorithm};
pub use config::{AdaptiveConfig, Algorithm};
pub use controller::{ChangeReason, LimitState};
pub use window::{Outcome, Sample, Window};
