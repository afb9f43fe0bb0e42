//! Where a request is counted in the stats and in the sync report: typed labels, so no code
//! builds or splits `"tenant:NAME"` strings. Names are shared (`Arc<str>`): a label is cloned
//! per request, never its name.

use std::sync::Arc;

/// The stat label of every tenant not listed in the configuration.
pub const UNLISTED_LABEL: &str = "_unlisted";

/// A request's tenant as stats see it: a listed name, or all unlisted tenants together, so
/// stat cardinality follows the configuration, never what clients send.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantLabel {
    /// A tenant named in the configuration or the fleet policy.
    Listed(Arc<str>),
    /// Every other tenant.
    Unlisted,
}

impl TenantLabel {
    /// The label in a stat name (`_unlisted` for the unlisted).
    pub fn stat_name(&self) -> &str {
        match self {
            Self::Listed(name) => name,
            Self::Unlisted => UNLISTED_LABEL,
        }
    }

    /// The name in the sync report (`*` for the unlisted, as the fleet policy names them).
    pub fn report_name(&self) -> &str {
        match self {
            Self::Listed(name) => name,
            Self::Unlisted => crate::config::WILDCARD_TENANT,
        }
    }
}

/// A tenant or a class: one line of the sync report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// A tenant.
    Tenant(TenantLabel),
    /// A priority class, by name.
    Class(Arc<str>),
}

/// Where one request is counted: its tenant and, when classes are configured, its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// The request's tenant.
    pub tenant: TenantLabel,
    /// The request's class, if classes are configured.
    pub class: Option<Arc<str>>,
}

/// Envoy-wide counts of one label, as the host's stats hold them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// In flight now.
    pub inflight: u64,
    /// Admitted since the start.
    pub admitted: u64,
    /// Rejected since the start, all reasons.
    pub rejected: u64,
}
