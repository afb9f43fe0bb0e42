//! The limits a request is admitted against: the control service's allowance while it is
//! fresh, else the static configuration. Built once per allowance and shared by every
//! request of this VM, so no request parses JSON.

use wipgate_admission::control_sync::{effective, Allowance, ALLOWANCE_KEY};
use wipgate_admission::{GateConfig, Partitions, SharedData};

use crate::host::HostSharedData;

/// One set of limits, immutable.
pub struct Limits {
    /// The configuration with the allowance applied.
    pub config: GateConfig,
    /// Its partitions, ready for admission decisions.
    pub partitions: Partitions,
    /// The allowance's `seq`, or `None` on the static configuration.
    pub seq: Option<u64>,
    /// The fleet policy version of the allowance.
    pub policy_version: Option<u64>,
    /// Past this (ms since the epoch) these limits must be rebuilt.
    pub valid_until_ms: u64,
}

impl Limits {
    /// The limits of `allowance` (if fresh at `now_ms`) over `static_config`.
    pub fn build(static_config: &GateConfig, allowance: Option<&Allowance>, now_ms: u64) -> Self {
        let e = effective(static_config, allowance, now_ms);
        let in_force = allowance.filter(|_| e.seq.is_some());
        Self {
            partitions: Partitions::new(&e.config).saturated(e.saturated),
            config: e.config,
            seq: e.seq,
            policy_version: in_force.map(|a| a.policy_version),
            valid_until_ms: in_force.map_or(u64::MAX, |a| a.valid_until_ms),
        }
    }
}

/// The allowance in shared data, if any parses.
pub fn load_allowance() -> Option<Allowance> {
    let (bytes, _) = HostSharedData.get(ALLOWANCE_KEY).ok()?;
    serde_json::from_slice(&bytes?).ok()
}
