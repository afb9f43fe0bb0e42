//! The fleet policy: fleet-wide numbers, validated with the same rules as the filter's
//! plugin configuration ([`validate_bulkheads`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{validate_bulkheads, ConfigError, WILDCARD_TENANT};
use crate::fleet::probe_policy::{validate_probes, ProbeSpec};
use crate::{Bulkhead, TenantName};

/// Most tenant or class entries one policy may hold: the bound of a sync report.
pub const MAX_POLICY_ENTRIES: usize = crate::wire::MAX_ENTRIES;

/// The policy a control service starts with when none was ever stored.
pub const DEFAULT_GLOBAL_MAX_INFLIGHT: u32 = 1000;

/// Fleet-wide limits. Invariants once validated: `global_max_inflight >= 1`; tenant and class
/// names are well-formed (`*` allowed among tenants); each entry's `max >= reserved`; the
/// reservations of each set add up to at most `global_max_inflight`; `probes` are valid
/// (see [`validate_probes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetPolicy {
    /// Requests in flight through all Envoys together, never more.
    pub global_max_inflight: u32,
    /// Fleet-wide bulkheads per tenant; `*` applies to each tenant not listed by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, Bulkhead>,
    /// Fleet-wide bulkheads per priority class.
    #[serde(default)]
    pub classes: BTreeMap<String, Bulkhead>,
    /// Bottleneck probes: the control service samples the protected resource with them and
    /// sends the composite health to every Envoy.
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        Self {
            global_max_inflight: DEFAULT_GLOBAL_MAX_INFLIGHT,
            tenants: BTreeMap::new(),
            classes: BTreeMap::new(),
            probes: Vec::new(),
        }
    }
}

impl FleetPolicy {
    /// Parses and validates a policy document; the error names the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let policy: Self = parse_json(bytes)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the invariants written on the type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.global_max_inflight < 1 {
            return Err(error("global_max_inflight", "must be at least 1"));
        }
        for (field, entries) in [("tenants", &self.tenants), ("classes", &self.classes)] {
            if entries.len() > MAX_POLICY_ENTRIES {
                return Err(error(
                    field,
                    format!("more than {MAX_POLICY_ENTRIES} entries"),
                ));
            }
        }
        validate_bulkheads("tenants", &self.tenants, self.global_max_inflight, true)?;
        validate_bulkheads("classes", &self.classes, self.global_max_inflight, false)?;
        validate_probes(&self.probes)
    }

    /// This policy with `name`'s entry set to `bulkhead`, validated as a whole.
    pub fn with_tenant(&self, name: &str, bulkhead: Bulkhead) -> Result<Self, ConfigError> {
        if name != WILDCARD_TENANT && TenantName::parse(name).is_none() {
            return Err(error(
                format!("tenants.{name}"),
                "name must be 1-64 bytes of [A-Za-z0-9._-] or `*`",
            ));
        }
        let mut next = self.clone();
        next.tenants.insert(name.to_owned(), bulkhead);
        next.validate()?;
        Ok(next)
    }

    /// This policy without `name`'s entry, or `None` when there is no such entry.
    pub fn without_tenant(&self, name: &str) -> Option<Self> {
        let mut next = self.clone();
        next.tenants.remove(name).map(|_| next)
    }
}

pub use crate::config::parse_json;

pub(crate) fn error(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn field_of(json: &str) -> String {
        FleetPolicy::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn full_policy_parses_and_round_trips() {
        let json = r#"{"global_max_inflight": 500,
            "tenants": {"acme": {"reserved": 20, "max": 80}, "*": {"max": 100}},
            "classes": {"interactive": {"reserved": 40}, "batch": {"max": 60}},
            "probes": []}"#;
        let p = FleetPolicy::parse(json.as_bytes()).unwrap();
        assert_eq!(
            p.tenants["acme"],
            Bulkhead {
                reserved: 20,
                max: Some(80)
            }
        );
        assert_eq!(
            p.tenants["*"],
            Bulkhead {
                reserved: 0,
                max: Some(100)
            }
        );
        let again = FleetPolicy::parse(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(again, p);
        let minimal = FleetPolicy::parse(br#"{"global_max_inflight": 1}"#).unwrap();
        assert!(minimal.tenants.is_empty() && minimal.probes.is_empty());
    }

    #[test]
    fn bad_policies_name_their_field() {
        let cases = [
            ("{}", "global_max_inflight"),
            (r#"{"global_max_inflight": 0}"#, "global_max_inflight"),
            (r#"{"global_max_inflight": "x"}"#, "global_max_inflight"),
            (r#"{"global_max_inflight": 5, "extra": 1}"#, "extra"),
            (
                r#"{"global_max_inflight": 5, "tenants": {"a": {"reserved": 3, "max": 2}}}"#,
                "tenants.a.max",
            ),
            (
                r#"{"global_max_inflight": 5, "tenants": {"a": {"reserved": 3}, "b": {"reserved": 3}}}"#,
                "tenants",
            ),
            (
                r#"{"global_max_inflight": 5, "tenants": {"a b": {}}}"#,
                "tenants.a b",
            ),
            (
                r#"{"global_max_inflight": 5, "classes": {"*": {}}}"#,
                "classes.*",
            ),
            (
                r#"{"global_max_inflight": 5, "classes": {"i": {"reserved": 9}}}"#,
                "classes",
            ),
            (
                r#"{"global_max_inflight": 5, "probes": [{"url": "x"}]}"#,
                "probes[0].name",
            ),
            (r#"{"global_max_inflight": 5, "probes": {}}"#, "probes"),
            (r#"{"global_max_inflight": 5} x"#, "(top level)"),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json), field, "policy {json}");
        }
    }

    #[test]
    fn tenant_edits_are_validated_as_a_whole() {
        let p = FleetPolicy::parse(
            br#"{"global_max_inflight": 10, "tenants": {"a": {"reserved": 6}}}"#,
        )
        .unwrap();
        let ok = p
            .with_tenant(
                "b",
                Bulkhead {
                    reserved: 4,
                    max: Some(5),
                },
            )
            .unwrap();
        assert_eq!(ok.tenants.len(), 2);
        assert_eq!(
            p.with_tenant(
                "b",
                Bulkhead {
                    reserved: 5,
                    max: None
                }
            )
            .unwrap_err()
            .field,
            "tenants"
        );
        assert_eq!(
            p.with_tenant("b/c", Bulkhead::default()).unwrap_err().field,
            "tenants.b/c"
        );
        assert!(p
            .with_tenant(
                "*",
                Bulkhead {
                    reserved: 0,
                    max: Some(3)
                }
            )
            .is_ok());
        assert!(p.without_tenant("zz").is_none());
        assert!(p.without_tenant("a").unwrap().tenants.is_empty());
    }
}
