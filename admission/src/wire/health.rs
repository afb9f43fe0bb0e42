//! The protected resource's health, as the control service's probes judge it and as every
//! Envoy receives it in its sync reply.

use serde::{Deserialize, Serialize};

/// `ok`: no change. `degraded`: limits scaled to `limit_percent` (1-99) of what they were.
/// `saturated`: only classes with a reservation are admitted, within it; everything else
/// gets `503 bottleneck_saturated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ResourceHealth {
    /// Healthy.
    #[default]
    Ok,
    /// Under strain: limits scaled down.
    Degraded {
        /// Percentage (1-99) of the limits to keep.
        limit_percent: u8,
    },
    /// No room for unreserved work.
    Saturated,
}

impl ResourceHealth {
    /// `limit` as this health allows it: scaled down when degraded, never below 1.
    pub fn scale(self, limit: u32) -> u32 {
        match self {
            Self::Degraded { limit_percent } => {
                let percent = u64::from(limit_percent.clamp(1, 100));
                let scaled = u64::from(limit) * percent / 100;
                // A positive share never scales to nothing; a share of 0 stays 0.
                u32::try_from(scaled)
                    .unwrap_or(limit)
                    .max(u32::from(limit > 0))
            }
            Self::Ok | Self::Saturated => limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_and_scaling() {
        let d: ResourceHealth =
            serde_json::from_str(r#"{"state": "degraded", "limit_percent": 50}"#).unwrap();
        assert_eq!(d, ResourceHealth::Degraded { limit_percent: 50 });
        assert_eq!(d.scale(10), 5);
        assert_eq!(d.scale(1), 1);
        assert_eq!(d.scale(0), 0, "a share of none stays none");
        assert_eq!(
            serde_json::to_string(&ResourceHealth::Saturated).unwrap(),
            r#"{"state":"saturated"}"#
        );
        assert_eq!(ResourceHealth::Ok.scale(7), 7);
        assert!(serde_json::from_str::<ResourceHealth>(r#"{"state": "on_fire"}"#).is_err());
    }
}
