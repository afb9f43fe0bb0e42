//! Reservations and caps for one partition (a tenant or a priority class) of a limit.

use serde::{Deserialize, Serialize};

/// `reserved`: in-flight capacity that only this partition may use.
/// `max`: in-flight this partition never exceeds; absent means "up to the whole limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Bulkhead {
    /// Capacity held back for this partition while it does not use it.
    #[serde(default)]
    pub reserved: u32,
    /// Hard cap for this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

impl Bulkhead {
    /// Checks one entry: `max` at least 1 and not below `reserved`.
    /// Returns the problem text; the caller knows the field path.
    pub fn problem(&self) -> Option<String> {
        match self.max {
            Some(0) => Some("max must be at least 1".to_owned()),
            Some(max) if max < self.reserved => {
                Some(format!("max ({max}) is below reserved ({})", self.reserved))
            }
            _ => None,
        }
    }
}
