//! The fleet policy: fleet-wide numbers, validated with the same rules as the filter's
//! plugin configuration ([`validate_bulkheads`]), and the bottleneck probes to run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wipgate_admission::config::{parse_json, validate_bulkheads, ConfigError, WILDCARD_TENANT};
use wipgate_admission::wire::MAX_ENTRIES;
use wipgate_admission::{Bulkhead, TenantName};

use crate::field_error::field_error;
use crate::probes::policy::{validate_probes, ProbeSpec};

/// Most tenant or class entries one policy may hold: as many as one sync report may carry.
pub const MAX_POLICY_ENTRIES: usize = MAX_ENTRIES;

/// The policy a control service starts with when none was ever stored.
pub const DEFAULT_GLOBAL_MAX_INFLIGHT: u32 = 1000;

/// Fleet-wide limits. Invariants once validated: `global_max_inflight >= 1`; tenant and class
/// names are well-formed (`*` allowed among tenants); each entry's `max >= reserved`; the
/// reservations of each set add up to at most `global_max_inflight`; `probes` are valid
/// (see [`validate_probes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
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
            return Err(field_error("global_max_inflight", "must be at least 1"));
        }
        for (field, entries) in [("tenants", &self.tenants), ("classes", &self.classes)] {
            if entries.len() > MAX_POLICY_ENTRIES {
                return Err(field_error(
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
            return Err(field_error(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::probes::policy::{ProbeKind, ProbeLevel, MAX_PROBES};

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

    // The probes of a policy document: defaults, and fields named as the parser names them.

    const DOC: &str = r#"{"global_max_inflight": 100, "probes": [
        {"name": "orders-db", "kind": "postgres",
         "dsn": "host=127.0.0.1 port=5432 user=wipgate dbname=orders", "password_env": "WIPGATE_PROBE_ORDERS_PW",
         "connections_percent": {"degraded": 70, "saturated": 90},
         "lock_waits": {"degraded": 5, "saturated": 20},
         "query_latency_ms": {"degraded": 50, "saturated": 200}},
        {"name": "inventory", "kind": "http", "url": "http://127.0.0.1:8081/health",
         "interval_ms": 2000, "timeout_ms": 800, "enter_after": 1, "leave_after": 5,
         "degraded_limit_percent": 30,
         "latency_ms": {"degraded": 100, "saturated": 500}, "non_2xx": "saturated"}]}"#;

    #[test]
    fn documented_probes_parse_with_defaults_and_round_trip() {
        let p = FleetPolicy::parse(DOC.as_bytes()).unwrap();
        let db = &p.probes[0];
        assert_eq!(db.kind, ProbeKind::Postgres);
        assert_eq!(
            (
                db.interval_ms,
                db.timeout_ms,
                db.enter_after,
                db.leave_after
            ),
            (1000, 500, 2, 3)
        );
        assert_eq!(db.degraded_limit_percent, 50);
        assert_eq!(p.probes[1].non_2xx, Some(ProbeLevel::Saturated));
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(FleetPolicy::parse(&json).unwrap(), p);
        assert!(!String::from_utf8(json).unwrap().contains("\"url\":null"));
    }

    fn probe_field_of(probe: &str) -> String {
        let json = format!(r#"{{"global_max_inflight": 5, "probes": [{probe}]}}"#);
        FleetPolicy::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn bad_probes_name_their_field() {
        let pg = r#""name": "db", "kind": "postgres", "dsn": "host=h""#;
        let cases = [
            (r#"{"kind": "http", "url": "http://x/"}"#.to_owned(), "probes[0].name"),
            (r#"{"name": "a b", "kind": "http", "url": "http://x/"}"#.to_owned(), "probes[0].name"),
            (r#"{"name": "x", "kind": "redis"}"#.to_owned(), "probes[0].kind"),
            (r#"{"name": "x", "kind": "http"}"#.to_owned(), "probes[0].url"),
            (r#"{"name": "x", "kind": "postgres"}"#.to_owned(), "probes[0].dsn"),
            (r#"{"name": "x", "kind": "http", "url": "https://x/"}"#.to_owned(), "probes[0].url"),
            (r#"{"name": "x", "kind": "http", "url": "http://u:p@x/"}"#.to_owned(), "probes[0].url"),
            (r#"{"name": "x", "kind": "postgres", "dsn": "host=h password=s"}"#.to_owned(), "probes[0].dsn"),
            (r#"{"name": "x", "kind": "postgres", "dsn": "postgres://u:s@h/db"}"#.to_owned(), "probes[0].dsn"),
            (format!(r#"{{{pg}, "url": "http://x/"}}"#), "probes[0].url"),
            (format!(r#"{{{pg}, "latency_ms": {{"degraded": 1, "saturated": 2}}}}"#), "probes[0].latency_ms"),
            (r#"{"name": "x", "kind": "http", "url": "http://x/", "lock_waits": {"degraded": 1, "saturated": 2}}"#.to_owned(), "probes[0].lock_waits"),
            (format!(r#"{{{pg}, "interval_ms": 50}}"#), "probes[0].interval_ms"),
            (format!(r#"{{{pg}, "timeout_ms": 2000}}"#), "probes[0].timeout_ms"),
            (format!(r#"{{{pg}, "enter_after": 0}}"#), "probes[0].enter_after"),
            (format!(r#"{{{pg}, "leave_after": 101}}"#), "probes[0].leave_after"),
            (format!(r#"{{{pg}, "degraded_limit_percent": 100}}"#), "probes[0].degraded_limit_percent"),
            (format!(r#"{{{pg}, "lock_waits": {{"degraded": 5, "saturated": 5}}}}"#), "probes[0].lock_waits"),
            (format!(r#"{{{pg}, "lock_waits": {{"degraded": 0, "saturated": 5}}}}"#), "probes[0].lock_waits"),
            (format!(r#"{{{pg}, "lock_waits": {{"degraded": 1}}}}"#), "probes[0].lock_waits.saturated"),
            (format!(r#"{{{pg}, "connections_percent": {{"degraded": 70, "saturated": 120}}}}"#), "probes[0].connections_percent.saturated"),
            (format!(r#"{{{pg}, "password_env": "A-B"}}"#), "probes[0].password_env"),
            (format!(r#"{{{pg}, "password_env": "WIPGATE_ADMIN_TOKEN"}}"#), "probes[0].password_env"),
            (format!(r#"{{{pg}, "password_env": "WIPGATE_PROBE_"}}"#), "probes[0].password_env"),
            (format!(r#"{{{pg}, "extra": 1}}"#), "probes[0].extra"),
            (r#"{"name": "x", "kind": "http", "url": "http://x/", "non_2xx": "ok"}"#.to_owned(), "probes[0].non_2xx"),
            (format!(r#"{{{pg}}}, {{{pg}}}"#), "probes[1].name"),
        ];
        for (probe, field) in cases {
            assert_eq!(probe_field_of(&probe), field, "probe {probe}");
        }
        let many = vec![format!(r#"{{{pg}}}"#); MAX_PROBES + 1].join(",");
        assert_eq!(probe_field_of(&many), "probes");
    }
}
