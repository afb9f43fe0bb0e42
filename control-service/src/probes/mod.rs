//! Bottleneck probes: the policy declares them ([`policy`]); one tokio task per probe
//! ([`runner`]) samples the protected resource at its interval, within its timeout, turns
//! the sample into a level ([`sample`]) and feeds the pure hysteresis machine ([`state`]);
//! [`ProbeHub`] publishes each probe's [`ProbeStatus`] and the composite `ResourceHealth`
//! that every sync reply carries. Each replica probes on its own.
//!
//! Nothing here depends on the rest of the service but the clock: the service's metrics,
//! status and routes read the probes, never the other way round.

mod http;
pub mod hub;
pub mod metrics;
pub mod policy;
mod postgres;
mod runner;
pub mod sample;
pub mod state;
pub mod status;

pub use self::hub::ProbeHub;
pub use self::metrics::ProbeMetrics;
pub use self::policy::{ProbeKind, ProbeLevel, ProbeSpec, Thresholds};
pub use self::sample::ProbeSample;
pub use self::state::{composite, Hysteresis, ProbeState};
pub use self::status::ProbeStatus;
