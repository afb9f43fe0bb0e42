//! Where a request is counted in the stats and in the sync report: typed labels, so no code
//! builds or splits `"tenant:NAME"` strings. Names are shared (`Arc<str>`): a label is cloned
//! per request, never its name.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

/// The escape character of stat name segments: not a tenant or class name character.
const ESCAPE: char = '~';

/// A tenant or class name as one stat name segment (Envoy splits stat names at dots): a dot
/// becomes `~2e`, a leading `_` `~5f` (so `_unlisted` stays the unlisted tenants' alone), and
/// everything else of the name alphabet (`[A-Za-z0-9._-]`) stays as it is. The mapping is
/// one-to-one, so `a.b` and `a_b` never share a stat; names without dots or a leading `_`
/// keep their stat names.
pub fn stat_segment(name: &str) -> Cow<'_, str> {
    let plain = |(i, c): (usize, char)| c != '.' && c != ESCAPE && !(i == 0 && c == '_');
    if name.chars().enumerate().all(plain) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if plain((i, c)) {
            out.push(c);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "{ESCAPE}{:02x}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

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
    /// The label as one stat name segment (`_unlisted` for the unlisted; a listed name
    /// escaped by [`stat_segment`], so no listed name can take the unlisted's).
    pub fn stat_name(&self) -> Cow<'_, str> {
        match self {
            Self::Listed(name) => stat_segment(name),
            Self::Unlisted => Cow::Borrowed(UNLISTED_LABEL),
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

/// A tenant or a class: one line of the sync report, one stat prefix.
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

/// What one write of the ledger changed in flight: what the in-flight gauges add. Gauges
/// move only by what the ledger's compare-and-swap says changed (once per change), never by
/// a VM's own +1/-1, so a reclaim, a late release of a reclaimed slot or a lost event cannot
/// make them drift, and the ledgers of several configurations in one Envoy add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// All workers together.
    pub total: i64,
    /// Per label of the limits in force (listed tenants, the unlisted, classes).
    pub by_label: Vec<(Label, i64)>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stat_segments_keep_plain_names_and_never_collide() {
        assert_eq!(stat_segment("acme-1_x"), "acme-1_x");
        assert_eq!(stat_segment("a.b"), "a~2eb");
        assert_ne!(stat_segment("a.b"), stat_segment("a_b"));
        assert_ne!(stat_segment("a.b"), stat_segment("a-b"));
        let listed = TenantLabel::Listed(Arc::from(UNLISTED_LABEL));
        assert_ne!(listed.stat_name(), TenantLabel::Unlisted.stat_name());
        assert_eq!(listed.stat_name(), "~5funlisted");
    }

    proptest! {
        #[test]
        fn stat_segments_are_one_to_one(a in "[A-Za-z0-9._~-]{1,12}", b in "[A-Za-z0-9._~-]{1,12}") {
            let (x, y) = (stat_segment(&a), stat_segment(&b));
            prop_assert!(!x.contains('.'));
            prop_assert_eq!(a == b, x == y);
            prop_assert!(x != UNLISTED_LABEL);
        }
    }
}
