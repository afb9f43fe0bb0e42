//! The plugin configuration: parsed once in `on_configure` into an immutable, validated
//! [`GateConfig`], or refused with one error that names the field.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::adaptive::AdaptiveConfig;
use crate::queue::QueueConfig;
use crate::{Bulkhead, TenantName};

/// An invalid configuration: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field at fault, e.g. `tenants.acme.max`.
    pub field: String,
    /// What is wrong, in words.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The tenant entry that applies to tenants not listed by name.
pub const WILDCARD_TENANT: &str = "*";

/// Settings for the periodic sync with the control service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Envoy cluster of the control service.
    pub cluster: String,
    /// `:authority` of the sync calls; defaults to the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// How often to sync.
    #[serde(default = "defaults::interval_ms")]
    pub interval_ms: u64,
    /// How long one sync call may take.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// How long a last good allowance is kept after syncs start failing.
    #[serde(default = "defaults::stale_after_ms")]
    pub stale_after_ms: u64,
    /// Bearer token of the sync calls (the control service's `--sync-token-file`): 1-4096
    /// bytes of visible ASCII.
    #[serde(default)]
    pub token: Option<String>,
    /// What to enforce without a fresh allowance (before the first one, and past the stale
    /// window). Without it: the static configuration until the first allowance, and the
    /// last allowance (never below 1) past the stale window.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
}

/// Limits without a fresh allowance, chosen by the operator so that the fleet stays within
/// its number while the control service is out of reach (e.g. the fleet's number divided by
/// the most Envoys it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// This Envoy's in-flight limit (at most its `max_inflight`, at least 1).
    pub max_inflight: u32,
}

/// The configuration as written; [`GateConfig::parse`] turns it into a [`GateConfig`].
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    max_inflight: u32,
    #[serde(default)]
    min_inflight: Option<u32>,
    #[serde(default = "defaults::tenant_header")]
    tenant_header: String,
    #[serde(default = "defaults::default_tenant")]
    default_tenant: String,
    #[serde(default = "defaults::max_tenants")]
    max_tenants: u32,
    #[serde(default)]
    tenants: BTreeMap<String, Bulkhead>,
    #[serde(default = "defaults::priority_header")]
    priority_header: String,
    #[serde(default)]
    default_class: Option<String>,
    #[serde(default)]
    classes: BTreeMap<String, Bulkhead>,
    #[serde(default = "defaults::retry_after_s")]
    retry_after_s: u32,
    #[serde(default)]
    control: Option<ControlConfig>,
    #[serde(default)]
    adaptive: Option<AdaptiveConfig>,
    #[serde(default)]
    queue: Option<QueueConfig>,
    #[serde(default)]
    scope: Option<String>,
}

mod defaults {
    pub fn tenant_header() -> String {
        "x-tenant-id".to_owned()
    }
    pub fn default_tenant() -> String {
        "default".to_owned()
    }
    pub fn max_tenants() -> u32 {
        1024
    }
    pub fn priority_header() -> String {
        "x-priority".to_owned()
    }
    pub fn retry_after_s() -> u32 {
        1
    }
    pub fn interval_ms() -> u64 {
        1000
    }
    pub fn timeout_ms() -> u64 {
        250
    }
    pub fn stale_after_ms() -> u64 {
        15_000
    }
}

/// Upper bound of `max_tenants`: keeps memory and stat cardinality bounded.
pub const MAX_TENANTS_LIMIT: u32 = 65_536;
/// Upper bound of `retry_after_s` (one hour).
pub const MAX_RETRY_AFTER_S: u32 = 3_600;

/// A validated plugin configuration. Invariants: `max_inflight >= 1`; header names are
/// lowercase HTTP tokens; every reservation set fits within `max_inflight`.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Requests in flight through this Envoy, all workers together, never more.
    pub max_inflight: u32,
    /// Floor of the adaptive limit (1 when not set).
    pub min_inflight: Option<u32>,
    /// Header naming the tenant (lowercase).
    pub tenant_header: String,
    /// Tenant of requests without a well-formed tenant header.
    pub default_tenant: TenantName,
    /// Unlisted tenants counted apart at once; newcomers beyond share one count.
    pub max_tenants: u32,
    /// Per-tenant bulkheads; `*` is the template for unlisted tenants.
    pub tenants: BTreeMap<String, Bulkhead>,
    /// Header naming the priority class (lowercase).
    pub priority_header: String,
    /// Class of requests without a known priority header value (required with classes).
    pub default_class: Option<String>,
    /// Per-class bulkheads.
    pub classes: BTreeMap<String, Bulkhead>,
    /// `retry-after` seconds on rejections.
    pub retry_after_s: u32,
    /// Control-service sync; without it the static configuration alone is enforced.
    pub control: Option<ControlConfig>,
    /// Adaptive limits between `min_inflight` and `max_inflight`; without it the limit is
    /// `max_inflight` (or the fleet share).
    pub adaptive: Option<AdaptiveConfig>,
    /// The bounded wait for a slot; without it a request that finds none is rejected at once.
    pub queue: Option<QueueConfig>,
    /// The name of the ledger (limits, adaptive state, sync) this configuration shares with
    /// every other configuration of the same name in this Envoy; without it, each distinct
    /// configuration has its own (see [`crate::scope`]).
    pub scope: Option<String>,
}

impl GateConfig {
    /// Parses and validates the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "max_inflight",
                "the plugin configuration is empty; max_inflight is required",
            ));
        }
        parse_json::<RawConfig>(bytes)?.validate()
    }

    /// The configuration keys that are accepted and validated but have no effect in this
    /// configuration (`min_inflight` without `adaptive`); the filter logs them at start so
    /// nothing is silently ignored.
    pub fn not_yet_enforced(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.min_inflight.is_some() && self.adaptive.is_none() {
            keys.push("min_inflight");
        }
        keys
    }
}

/// Deserializes JSON, naming the field at fault on error (shared by the plugin
/// configuration and the control service's policy and sync bodies).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| serde_error(e.path().to_string(), e.inner().to_string()))?;
    de.end()
        .map_err(|e| ConfigError::new("(top level)", e.to_string()))?;
    Ok(value)
}

/// Turns a serde error into a field error; for unknown and missing fields the field is the
/// key itself, not its parent.
fn serde_error(path: String, message: String) -> ConfigError {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    // serde_path_to_error says "." for the document and "?" where parsing stopped before a
    // field was known (truncated or malformed JSON).
    let path = if path == "?" { ".".to_owned() } else { path };
    let field = match (named, path.as_str()) {
        (Some(key), ".") => key.to_owned(),
        (Some(key), path) if path == key || path.ends_with(&format!(".{key}")) => path.to_owned(),
        (Some(key), parent) => format!("{parent}.{key}"),
        (None, ".") => "(top level)".to_owned(),
        (None, path) => path.to_owned(),
    };
    ConfigError::new(field, message)
}

impl RawConfig {
    fn validate(self) -> Result<GateConfig, ConfigError> {
        if self.max_inflight < 1 {
            return Err(ConfigError::new("max_inflight", "must be at least 1"));
        }
        if let Some(min) = self.min_inflight {
            if min < 1 || min > self.max_inflight {
                return Err(ConfigError::new(
                    "min_inflight",
                    format!("must be between 1 and max_inflight ({})", self.max_inflight),
                ));
            }
        }
        let tenant_header = header_name("tenant_header", &self.tenant_header)?;
        let priority_header = header_name("priority_header", &self.priority_header)?;
        let default_tenant = TenantName::parse(&self.default_tenant).ok_or_else(|| {
            ConfigError::new("default_tenant", "must be 1-64 bytes of [A-Za-z0-9._-]")
        })?;
        if !(1..=MAX_TENANTS_LIMIT).contains(&self.max_tenants) {
            return Err(ConfigError::new(
                "max_tenants",
                format!("must be between 1 and {MAX_TENANTS_LIMIT}"),
            ));
        }
        if !(1..=MAX_RETRY_AFTER_S).contains(&self.retry_after_s) {
            return Err(ConfigError::new(
                "retry_after_s",
                format!("must be between 1 and {MAX_RETRY_AFTER_S}"),
            ));
        }
        validate_bulkheads("tenants", &self.tenants, self.max_inflight, true)?;
        validate_bulkheads("classes", &self.classes, self.max_inflight, false)?;
        match &self.default_class {
            Some(class) if !self.classes.contains_key(class) => {
                return Err(ConfigError::new(
                    "default_class",
                    format!("`{class}` is not one of the configured classes"),
                ));
            }
            None if !self.classes.is_empty() => {
                return Err(ConfigError::new(
                    "default_class",
                    "is required when classes are configured",
                ));
            }
            _ => {}
        }
        if let Some(control) = &self.control {
            validate_control(control)?;
        }
        if let Some(adaptive) = &self.adaptive {
            adaptive.validate()?;
        }
        if let Some(queue) = &self.queue {
            queue.validate()?;
        }
        if let Some(scope) = &self.scope {
            if TenantName::parse(scope).is_none() {
                return Err(ConfigError::new(
                    "scope",
                    "must be 1-64 bytes of [A-Za-z0-9._-]",
                ));
            }
        }
        Ok(GateConfig {
            max_inflight: self.max_inflight,
            min_inflight: self.min_inflight,
            tenant_header,
            default_tenant,
            max_tenants: self.max_tenants,
            tenants: self.tenants,
            priority_header,
            default_class: self.default_class,
            classes: self.classes,
            retry_after_s: self.retry_after_s,
            control: self.control,
            adaptive: self.adaptive,
            queue: self.queue,
            scope: self.scope,
        })
    }
}

/// Validates a set of bulkheads against the limit they partition: names well-formed, each
/// entry consistent, reservations summed within `limit`. Shared with the control service,
/// which validates its fleet policy with the same rules.
pub fn validate_bulkheads(
    field: &str,
    entries: &BTreeMap<String, Bulkhead>,
    limit: u32,
    allow_wildcard: bool,
) -> Result<(), ConfigError> {
    let mut reserved: u64 = 0;
    for (name, bulkhead) in entries {
        let wildcard = allow_wildcard && name == WILDCARD_TENANT;
        if !wildcard && TenantName::parse(name).is_none() {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "name must be 1-64 bytes of [A-Za-z0-9._-]",
            ));
        }
        if let Some(problem) = bulkhead.problem() {
            return Err(ConfigError::new(format!("{field}.{name}.max"), problem));
        }
        reserved += u64::from(bulkhead.reserved);
    }
    if reserved > u64::from(limit) {
        return Err(ConfigError::new(
            field,
            format!("reservations add up to {reserved}, more than the limit ({limit})"),
        ));
    }
    Ok(())
}

fn validate_control(control: &ControlConfig) -> Result<(), ConfigError> {
    if control.cluster.trim().is_empty() {
        return Err(ConfigError::new("control.cluster", "must not be empty"));
    }
    if !(100..=60_000).contains(&control.interval_ms) {
        return Err(ConfigError::new(
            "control.interval_ms",
            "must be between 100 and 60000",
        ));
    }
    if control.timeout_ms < 1 || control.timeout_ms > control.interval_ms {
        return Err(ConfigError::new(
            "control.timeout_ms",
            "must be at least 1 and at most control.interval_ms",
        ));
    }
    if control.stale_after_ms < control.interval_ms {
        return Err(ConfigError::new(
            "control.stale_after_ms",
            "must be at least control.interval_ms",
        ));
    }
    if control.fallback.is_some_and(|f| f.max_inflight == 0) {
        return Err(ConfigError::new(
            "control.fallback.max_inflight",
            "must be at least 1",
        ));
    }
    if let Some(token) = &control.token {
        if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "control.token",
                "must be 1-4096 bytes of visible ASCII (no spaces)",
            ));
        }
    }
    Ok(())
}

/// Header names are matched lowercase, as Envoy stores them.
fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.starts_with(':') || !name.bytes().all(token) {
        return Err(ConfigError::new(
            field,
            "must be a non-empty HTTP header name",
        ));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"{
      "max_inflight": 200,
      "min_inflight": 8,
      "tenant_header": "x-tenant-id",
      "default_tenant": "default",
      "max_tenants": 1024,
      "tenants": { "acme": {"reserved": 20, "max": 80}, "*": {"reserved": 0, "max": 100} },
      "priority_header": "x-priority",
      "default_class": "interactive",
      "classes": { "interactive": {"reserved": 40}, "batch": {"max": 60} },
      "retry_after_s": 1,
      "control": { "cluster": "wipgate_control", "authority": "wipgate-control",
                   "interval_ms": 1000, "timeout_ms": 250, "stale_after_ms": 15000 }
    }"#;

    fn field_of(json: &str) -> String {
        GateConfig::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn contract_example_parses() {
        let c = GateConfig::parse(CONTRACT_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.max_inflight, 200);
        assert_eq!(
            c.tenants["acme"],
            Bulkhead {
                reserved: 20,
                max: Some(80)
            }
        );
        assert_eq!(
            c.classes["batch"],
            Bulkhead {
                reserved: 0,
                max: Some(60)
            }
        );
        assert_eq!(c.control.as_ref().unwrap().timeout_ms, 250);
        assert_eq!(c.not_yet_enforced(), vec!["min_inflight"]);
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = GateConfig::parse(br#"{"max_inflight": 5}"#).unwrap();
        assert_eq!(c.tenant_header, "x-tenant-id");
        assert_eq!(c.default_tenant.as_str(), "default");
        assert_eq!(c.retry_after_s, 1);
        assert!(c.not_yet_enforced().is_empty());
    }

    #[test]
    fn bad_configs_name_their_field() {
        let cases = [
            ("", "max_inflight"),
            ("{}", "max_inflight"),
            (r#"{"max_inflight": 0}"#, "max_inflight"),
            (r#"{"max_inflight": -3}"#, "max_inflight"),
            (r#"{"max_inflight": "ten"}"#, "max_inflight"),
            (r#"{"max_inflight": 5, "bogus": 1}"#, "bogus"),
            (
                r#"{"max_inflight": 5, "tenants": {"a": {"reserved": 3, "max": 1}}}"#,
                "tenants.a.max",
            ),
            (
                r#"{"max_inflight": 5, "tenants": {"a": {"reserved": 3, "mx": 1}}}"#,
                "tenants.a.mx",
            ),
            (
                r#"{"max_inflight": 5, "tenants": {"a": {"reserved": 3}, "b": {"reserved": 3}}}"#,
                "tenants",
            ),
            (
                r#"{"max_inflight": 5, "tenants": {"a b": {}}}"#,
                "tenants.a b",
            ),
            (
                r#"{"max_inflight": 5, "classes": {"i": {"reserved": 6}}, "default_class": "i"}"#,
                "classes",
            ),
            (
                r#"{"max_inflight": 5, "classes": {"i": {}}}"#,
                "default_class",
            ),
            (
                r#"{"max_inflight": 5, "classes": {"i": {}}, "default_class": "x"}"#,
                "default_class",
            ),
            (r#"{"max_inflight": 5, "min_inflight": 6}"#, "min_inflight"),
            (
                r#"{"max_inflight": 5, "tenant_header": "bad header"}"#,
                "tenant_header",
            ),
            (
                r#"{"max_inflight": 5, "default_tenant": ""}"#,
                "default_tenant",
            ),
            (r#"{"max_inflight": 5, "max_tenants": 0}"#, "max_tenants"),
            (
                r#"{"max_inflight": 5, "retry_after_s": 0}"#,
                "retry_after_s",
            ),
            (r#"{"max_inflight": 5, "control": {}}"#, "control.cluster"),
            (
                r#"{"max_inflight": 5, "control": {"cluster": "c", "timeout_ms": 5000}}"#,
                "control.timeout_ms",
            ),
            (r#"{"max_inflight": 5} trailing"#, "(top level)"),
            (
                r#"{"max_inflight": 5, "adaptive": {"algorithm": "vegas"}}"#,
                "adaptive.algorithm",
            ),
            (
                r#"{"max_inflight": 5, "adaptive": {"algorithm": "aimd", "backoff": 1.5}}"#,
                "adaptive.backoff",
            ),
            (
                r#"{"max_inflight": 5, "adaptive": {"algorithm": "gradient", "tolerance": 0.5}}"#,
                "adaptive.tolerance",
            ),
            (
                r#"{"max_inflight": 5, "adaptive": {"algorithm": "aimd", "speed": 1}}"#,
                "adaptive.speed",
            ),
            ("not json", "(top level)"),
            (r#"{"max_inflight": 10,"#, "(top level)"),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json), field, "config {json}");
        }
    }

    #[test]
    fn header_names_are_lowercased() {
        let c = GateConfig::parse(br#"{"max_inflight": 5, "tenant_header": "X-Tenant"}"#).unwrap();
        assert_eq!(c.tenant_header, "x-tenant");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = GateConfig::parse(&bytes);
        }
    }
}
