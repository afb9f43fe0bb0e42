//! What `/v1/status` and `/metrics` show of one probe: its level after hysteresis, its
//! last sample and its errors, as the probe's task last published them.

use serde::{Deserialize, Serialize};

use super::{ProbeKind, ProbeLevel, ProbeSample, ProbeState};

/// One probe as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeStatus {
    /// The probe's name in the policy.
    pub name: String,
    /// `postgres` or `http`.
    pub kind: ProbeKind,
    /// The probe's level after hysteresis; `pending` before its first sample.
    pub state: ProbeState,
    /// Limits are scaled to this percentage while the probe is `degraded`.
    pub degraded_limit_percent: u8,
    /// When the probe entered `state`, ms since the epoch.
    pub since_ms: Option<u64>,
    /// The last sample: what it measured, or `timed_out` / `failed`.
    pub last_sample: Option<ProbeSample>,
    /// The level of the last sample alone, before hysteresis.
    pub last_sample_level: Option<ProbeLevel>,
    /// When the last sample was taken, ms since the epoch.
    pub last_sample_ms: Option<u64>,
    /// The last error (connecting, querying, timing out), kept after recovery.
    pub last_error: Option<String>,
    /// When the last error happened, ms since the epoch.
    pub last_error_ms: Option<u64>,
    /// Samples taken since the probe (re)started.
    pub samples: u64,
    /// Samples that failed or timed out since the probe (re)started.
    pub errors: u64,
    /// Which task owns this entry; a replaced task's late writes are ignored.
    #[serde(skip)]
    pub(super) generation: u64,
}
