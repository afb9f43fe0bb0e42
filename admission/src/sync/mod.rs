//! The filter's side of the periodic sync with the control service: who calls, when, what a
//! reply is worth — as functions of `now`, bytes and the [`Host`](crate::Host).
//!
//! One Envoy makes one call per interval, whatever its number of worker threads: the
//! [`SyncLease`] in shared data says when the next call is due and whether one is under way;
//! a worker that wins the compare-and-swap on it makes the call ([`SyncDriver`]). A good
//! reply becomes the [`Allowance`] in shared data, announced to every worker through the
//! ledger, fresh until its stale deadline; a failed call never clears a good allowance. Past
//! the deadline the last allowance stays in force (or `control.fallback`), never the static
//! configuration, so a fleet cut off from the service does not admit N x static. Every
//! report says what is in force, so the service never counts less against an Envoy than it
//! may be enforcing (lost replies included).

mod allowance;
mod driver;
mod instance;
mod lease;
mod report;

pub use allowance::{accept_reply, load_allowance, Allowance};
pub use driver::SyncDriver;
pub use instance::{instance_id, process_nonce};
pub use lease::SyncLease;
pub use report::{build_report, Reported};

/// Shared-data key of the [`SyncLease`].
pub const LEASE_KEY: &str = "wipgate.sync.lease.v2";
/// Shared-data key of the current [`Allowance`].
pub const ALLOWANCE_KEY: &str = "wipgate.sync.allowance.v1";
/// Shared-data key of this Envoy's generated instance id (when the node id is not set).
pub const INSTANCE_KEY: &str = "wipgate.instance.v1";
/// Shared-data key of this Envoy process's nonce.
pub const NONCE_KEY: &str = "wipgate.nonce.v1";
/// The control service's sync endpoint.
pub const SYNC_PATH: &str = "/v1/sync";

/// Why a sync failed, as the `wipgate.sync.failure.reason.<kind>` stats name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFailure {
    /// The host refused to make the call (e.g. the cluster does not exist).
    Dispatch,
    /// No response in time (Envoy's own 504), or a reset.
    Timeout,
    /// A response that is not 200.
    Status,
    /// A body that is not a sync reply.
    Parse,
    /// A reply that parses but makes no sense (for another instance, inconsistent numbers),
    /// or one that could not be stored.
    Invalid,
}

impl SyncFailure {
    /// Every kind, for defining stats up front.
    pub const ALL: [SyncFailure; 5] = [
        Self::Dispatch,
        Self::Timeout,
        Self::Status,
        Self::Parse,
        Self::Invalid,
    ];

    /// The stat and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::Parse => "parse",
            Self::Invalid => "invalid",
        }
    }
}
