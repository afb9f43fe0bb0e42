//! The fleet: what the control service and the filter share about fleet-wide limits.
//!
//! The control service holds one [`FleetPolicy`] for all Envoys; every Envoy reports its
//! counts in a [`SyncRequest`] and gets back its share of the fleet numbers in a
//! [`SyncReply`]. How a fleet number is split among the live instances is pure arithmetic
//! in [`allowance`], and [`FleetLedger`] is the whole bookkeeping for one process (the
//! control service's memory store); the Redis store keeps the same records in Redis and
//! calls the same functions. Bottleneck probes are declared in the policy
//! ([`probe_policy`]); their samples become levels ([`probe_sample`]) and, with hysteresis,
//! the [`ResourceHealth`] every reply carries ([`probe_state`]). Time is always an argument.

pub mod allowance;
pub mod ledger;
pub mod policy;
pub mod probe_policy;
pub mod probe_sample;
pub mod probe_state;

pub use crate::wire::{ResourceHealth, SyncReply, SyncRequest, UsageReport};
pub use allowance::{Dim, SplitParams};
pub use ledger::{FleetLedger, InstanceView};
pub use policy::FleetPolicy;
pub use probe_policy::{ProbeKind, ProbeLevel, ProbeSpec, Thresholds};
pub use probe_sample::ProbeSample;
pub use probe_state::{composite, Hysteresis, ProbeState};
