//! The JSON of `POST /v1/sync`: what an Envoy reports and the allowance it gets back.
//!
//! The filter serializes [`SyncRequest`] and parses [`SyncReply`]; the control service does
//! the opposite. Both sides use these types, so the wire format has one definition.
//!
//! Tolerant both ways: unknown fields are ignored, so a side that learns a new field never
//! breaks an older peer. A report says which version of the protocol it speaks
//! ([`PROTOCOL_VERSION`]); version 2 added `version`, `in_force`, `nonce` and
//! `max_inflight` to the report (absent, the service behaves as with version 1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{parse_json, ConfigError, WILDCARD_TENANT};
use crate::wire::health::ResourceHealth;
use crate::{Bulkhead, TenantName};

/// Longest instance id, in bytes.
pub const MAX_INSTANCE_LEN: usize = 256;

/// The protocol version this crate speaks (`version` of a report; 1 when absent).
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest per-process nonce, in bytes.
pub const MAX_NONCE_LEN: usize = 64;

/// Most tenant or class entries one report may hold. The control service bounds its fleet
/// policy by the same number: every entry is a dimension that each sync splits, so the
/// count bounds the work per sync and the size of a reply.
pub const MAX_ENTRIES: usize = 4096;

/// One Envoy's report. `admitted` and `rejected` count since the previous report.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncRequest {
    /// Protocol version of the report (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Stable id of the Envoy (e.g. its node id): 1-256 bytes of visible ASCII.
    pub instance: String,
    /// Requests in flight through this Envoy now.
    #[serde(default)]
    pub inflight: u32,
    /// Per-tenant counts; names as the filter resolved them (`*` for the overflow entry).
    #[serde(default)]
    pub tenants: BTreeMap<String, UsageReport>,
    /// Per-class counts.
    #[serde(default)]
    pub classes: BTreeMap<String, UsageReport>,
    /// The policy version of the allowance the Envoy currently holds, if any.
    #[serde(default)]
    pub policy_version: Option<u64>,
    /// The allowance this Envoy enforces as it sends the report (absent: none, it is on its
    /// static configuration). The service keeps accounting for it until a report shows a
    /// smaller one in force, so a lost reply never lets the fleet exceed its numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<InForce>,
    /// Random per Envoy process (1-64 bytes of visible ASCII): two processes reporting
    /// under one instance id are told apart and each gets a share of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// This Envoy's own static `max_inflight`: the service counts no more demand of it than
    /// it could ever have in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
}

/// The numbers of the allowance an Envoy enforces, as the reply gave them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InForce {
    /// Its `max_inflight`.
    pub max_inflight: u32,
    /// Its tenant entries.
    #[serde(default)]
    pub tenants: BTreeMap<String, Bulkhead>,
    /// Its class entries.
    #[serde(default)]
    pub classes: BTreeMap<String, Bulkhead>,
}

/// Counts of one tenant or class on one Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// In flight now.
    #[serde(default)]
    pub inflight: u32,
    /// Admitted since the previous report.
    #[serde(default)]
    pub admitted: u64,
    /// Rejected since the previous report.
    #[serde(default)]
    pub rejected: u64,
}

/// One Envoy's allowance: its share of the fleet numbers until its next sync.
///
/// `max_inflight` and a tenant's or class's `max` may be 0: this Envoy admits none of that
/// until its next sync (the fleet's capacity is in use elsewhere). A tenant or class
/// without `max` has no fleet-wide cap. A tenant or class that is not listed has no fleet
/// numbers; `*` applies to each tenant not listed by name, as in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncReply {
    /// The instance id of the request.
    pub instance: String,
    /// Version of the policy this allowance was computed from.
    pub policy_version: u64,
    /// Requests in flight this Envoy may have, all tenants together.
    pub max_inflight: u32,
    /// This Envoy's share of each tenant's fleet `reserved` and `max`.
    pub tenants: BTreeMap<String, Bulkhead>,
    /// This Envoy's share of each class's fleet `reserved` and `max`.
    pub classes: BTreeMap<String, Bulkhead>,
    /// True when the control service could not reach its store and repeats the last
    /// allowance it gave this Envoy.
    pub degraded: bool,
    /// How long from now this allowance may be used without a newer one, in ms.
    pub stale_after_ms: u64,
    /// The protected resource's health by the control service's probes (`ok` when absent).
    #[serde(default)]
    pub health: ResourceHealth,
}

impl SyncRequest {
    /// Parses and validates a report; the error names the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let request: Self = parse_json(bytes)?;
        request.validate()?;
        Ok(request)
    }

    /// Instance id and nonce well-formed; at most [`MAX_ENTRIES`] tenants and classes,
    /// with well-formed names, in the report and in `in_force`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = self.instance.as_bytes();
        if id.is_empty() || id.len() > MAX_INSTANCE_LEN || !id.iter().all(u8::is_ascii_graphic) {
            return Err(ConfigError::new(
                "instance",
                "must be 1-256 bytes of visible ASCII",
            ));
        }
        if let Some(nonce) = &self.nonce {
            let n = nonce.as_bytes();
            if n.is_empty() || n.len() > MAX_NONCE_LEN || !n.iter().all(u8::is_ascii_graphic) {
                return Err(ConfigError::new(
                    "nonce",
                    "must be 1-64 bytes of visible ASCII",
                ));
            }
        }
        validate_names("tenants", self.tenants.keys(), true)?;
        validate_names("classes", self.classes.keys(), false)?;
        if let Some(in_force) = &self.in_force {
            validate_names("in_force.tenants", in_force.tenants.keys(), true)?;
            validate_names("in_force.classes", in_force.classes.keys(), false)?;
        }
        Ok(())
    }
}

/// At most [`MAX_ENTRIES`] names, each a tenant name (or `*` where `wildcard`).
fn validate_names<'a>(
    field: &str,
    names: impl ExactSizeIterator<Item = &'a String>,
    wildcard: bool,
) -> Result<(), ConfigError> {
    if names.len() > MAX_ENTRIES {
        return Err(ConfigError::new(
            field,
            format!("more than {MAX_ENTRIES} entries"),
        ));
    }
    for name in names {
        let ok = (wildcard && name == WILDCARD_TENANT) || TenantName::parse(name).is_some();
        if !ok {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "name must be 1-64 bytes of [A-Za-z0-9._-]",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn documented_request_parses() {
        let json = r#"{"instance": "envoy-1", "inflight": 12,
            "tenants": {"acme": {"inflight": 10, "admitted": 300, "rejected": 4}},
            "classes": {"batch": {"inflight": 2}}, "policy_version": 7}"#;
        let r = SyncRequest::parse(json.as_bytes()).unwrap();
        assert_eq!(
            r.tenants["acme"],
            UsageReport {
                inflight: 10,
                admitted: 300,
                rejected: 4
            }
        );
        assert_eq!(r.classes["batch"].admitted, 0);
        assert_eq!(r.policy_version, Some(7));
        assert_eq!(
            SyncRequest::parse(br#"{"instance": "a"}"#)
                .unwrap()
                .inflight,
            0
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases = [
            (r#"{}"#, "instance"),
            (r#"{"instance": ""}"#, "instance"),
            (r#"{"instance": "a b"}"#, "instance"),
            (r#"{"instance": "a", "inflight": -1}"#, "inflight"),
            (
                r#"{"instance": "a", "tenants": {"x y": {}}}"#,
                "tenants.x y",
            ),
            (r#"{"instance": "a", "classes": {"*": {}}}"#, "classes.*"),
            (r#"{"instance": "a", "nonce": ""}"#, "nonce"),
            (
                r#"{"instance": "a", "in_force": {"max_inflight": 1, "classes": {"*": {}}}}"#,
                "in_force.classes.*",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(
                SyncRequest::parse(json.as_bytes()).unwrap_err().field,
                field,
                "{json}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored_both_ways() {
        let r = SyncRequest::parse(
            br#"{"instance": "a", "nope": 1, "version": 9, "tenants": {"t": {"inflite": 1}}}"#,
        )
        .unwrap();
        assert_eq!((r.version, r.tenants["t"].inflight), (Some(9), 0));
        let reply: SyncReply = crate::config::parse_json(
            br#"{"instance": "e", "policy_version": 1, "max_inflight": 3, "tenants": {},
                 "classes": {}, "degraded": false, "stale_after_ms": 10, "grant": 7,
                 "health": {"state": "ok", "why": "new"}}"#,
        )
        .unwrap();
        assert_eq!(reply.max_inflight, 3);
        // A version-1 report reads back as it was sent: no new fields appear on the wire.
        let old = SyncRequest {
            instance: "a".into(),
            ..SyncRequest::default()
        };
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("version").is_none() && json.get("in_force").is_none());
    }

    #[test]
    fn reply_round_trips() {
        let reply = SyncReply {
            instance: "e".into(),
            policy_version: 3,
            max_inflight: 40,
            tenants: [(
                "acme".to_owned(),
                Bulkhead {
                    reserved: 2,
                    max: Some(9),
                },
            )]
            .into(),
            classes: BTreeMap::new(),
            degraded: false,
            stale_after_ms: 14_000,
            health: ResourceHealth::Degraded { limit_percent: 60 },
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<SyncReply>(&json).unwrap(), reply);
    }
}
