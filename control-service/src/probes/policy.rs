//! Bottleneck probes as the fleet policy declares them: what to sample, how often, and the
//! thresholds that turn a sample into a level. Validated here, run by [`super::hub`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use wipgate_admission::{ConfigError, TenantName};

use crate::field_error::field_error;

/// Most probes one policy may hold (each is a task and a connection in every replica).
pub const MAX_PROBES: usize = 16;
/// Every `password_env` starts with this: the policy may name no other variable of the
/// service's environment.
pub const PASSWORD_ENV_PREFIX: &str = "WIPGATE_PROBE_";
/// Longest `dsn` or `url`, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;

/// What a probe samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A PostgreSQL server: connections in use, sessions waiting on locks, query latency.
    Postgres,
    /// An HTTP endpoint: status and latency of a `GET`.
    Http,
}

/// The level of one sample, of one probe, or of the whole resource. Ordered from the least
/// to the most constrained.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProbeLevel {
    /// Within every threshold.
    Ok,
    /// Past a `degraded` threshold, or the probe could not get a sample.
    Degraded,
    /// Past a `saturated` threshold.
    Saturated,
}

/// A pair of thresholds on one measure. Invariant once validated: `1 <= degraded < saturated`.
/// A value at or above a threshold is at that level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// From this value on, the measure is `degraded`.
    pub degraded: u64,
    /// From this value on, the measure is `saturated`.
    pub saturated: u64,
}

impl Thresholds {
    /// The level of `value`.
    pub fn level(self, value: u64) -> ProbeLevel {
        if value >= self.saturated {
            ProbeLevel::Saturated
        } else if value >= self.degraded {
            ProbeLevel::Degraded
        } else {
            ProbeLevel::Ok
        }
    }
}

/// One probe. Invariants once validated (see [`validate_probes`]): `name` is 1-64 bytes of
/// `[A-Za-z0-9._-]` and unique in the policy; a `postgres` probe has a `dsn` and only
/// PostgreSQL thresholds, an `http` probe a `url` (`http://`) and only HTTP ones; neither
/// target holds a password; `100 <= interval_ms <= 60000`, `10 <= timeout_ms <= interval_ms`;
/// `enter_after` and `leave_after` in 1..=100; `degraded_limit_percent` in 1..=99.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Name in status, metrics and logs.
    pub name: String,
    /// `postgres` or `http`.
    pub kind: ProbeKind,
    /// PostgreSQL: a libpq-style connection string (`host=... port=... user=... dbname=...`)
    /// or URL, without a password (see `password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
    /// PostgreSQL: name of an environment variable of the control service holding the
    /// password (the policy itself is public through `GET /v1/policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// HTTP: the URL to `GET` (`http://` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Time between two samples, ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time limit of one sample, connecting included, ms. A sample that runs out is at
    /// least `degraded`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive samples past a more constrained level before the probe moves there.
    #[serde(default = "default_enter_after")]
    pub enter_after: u32,
    /// Consecutive samples at a less constrained level before the probe moves back.
    #[serde(default = "default_leave_after")]
    pub leave_after: u32,
    /// While this probe is `degraded`, the limits are scaled to this percentage.
    #[serde(default = "default_limit_percent")]
    pub degraded_limit_percent: u8,
    /// PostgreSQL: client sessions as a percentage of `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_percent: Option<Thresholds>,
    /// PostgreSQL: sessions waiting on a lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_waits: Option<Thresholds>,
    /// PostgreSQL: latency of `SELECT 1`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_latency_ms: Option<Thresholds>,
    /// HTTP: latency of the `GET` until the response head, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Thresholds>,
    /// HTTP: the level of a response whose status is not 2xx (default `degraded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_2xx: Option<ProbeLevel>,
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_enter_after() -> u32 {
    2
}
fn default_leave_after() -> u32 {
    3
}
fn default_limit_percent() -> u8 {
    50
}

impl ProbeSpec {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        if TenantName::parse(&self.name).is_none() {
            return Err(field_error(
                field("name"),
                "must be 1-64 bytes of [A-Za-z0-9._-]",
            ));
        }
        if !(100..=60_000).contains(&self.interval_ms) {
            return Err(field_error(
                field("interval_ms"),
                "must be between 100 and 60000",
            ));
        }
        if self.timeout_ms < 10 || self.timeout_ms > self.interval_ms {
            return Err(field_error(
                field("timeout_ms"),
                format!("must be between 10 and interval_ms ({})", self.interval_ms),
            ));
        }
        for (name, n) in [
            ("enter_after", self.enter_after),
            ("leave_after", self.leave_after),
        ] {
            if !(1..=100).contains(&n) {
                return Err(field_error(field(name), "must be between 1 and 100"));
            }
        }
        if !(1..=99).contains(&self.degraded_limit_percent) {
            return Err(field_error(
                field("degraded_limit_percent"),
                "must be between 1 and 99",
            ));
        }
        // The fields of the other kind are refused rather than ignored.
        let (target, refused): (_, &[&str]) = match self.kind {
            ProbeKind::Postgres => (("dsn", &self.dsn), &["url", "latency_ms", "non_2xx"]),
            ProbeKind::Http => (
                ("url", &self.url),
                &[
                    "dsn",
                    "password_env",
                    "connections_percent",
                    "lock_waits",
                    "query_latency_ms",
                ],
            ),
        };
        for name in refused {
            if self.is_set(name) {
                return Err(field_error(
                    field(name),
                    format!("not a field of a `{}` probe", self.kind_name()),
                ));
            }
        }
        let Some(value) = target.1 else {
            return Err(field_error(
                field(target.0),
                format!("required for a `{}` probe", self.kind_name()),
            ));
        };
        self.validate_target(&field(target.0), value)?;
        if let Some(var) = &self.password_env {
            // The policy is written by admins over the API: it may name only variables set
            // aside for probe secrets, never the service's own (e.g. its admin token).
            let ok = var.len() > PASSWORD_ENV_PREFIX.len()
                && var.len() <= 256
                && var.starts_with(PASSWORD_ENV_PREFIX)
                && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(field_error(
                    field("password_env"),
                    format!("must be an environment variable name starting with {PASSWORD_ENV_PREFIX}: at most 256 bytes of [A-Za-z0-9_]"),
                ));
            }
        }
        for (name, t) in [
            ("connections_percent", self.connections_percent),
            ("lock_waits", self.lock_waits),
            ("query_latency_ms", self.query_latency_ms),
            ("latency_ms", self.latency_ms),
        ] {
            let Some(t) = t else { continue };
            if t.degraded < 1 || t.degraded >= t.saturated {
                return Err(field_error(field(name), "needs 1 <= degraded < saturated"));
            }
            if name == "connections_percent" && t.saturated > 100 {
                return Err(field_error(
                    format!("{}.saturated", field(name)),
                    "a percentage: at most 100",
                ));
            }
        }
        if self.non_2xx == Some(ProbeLevel::Ok) {
            return Err(field_error(
                field("non_2xx"),
                "must be `degraded` or `saturated`",
            ));
        }
        Ok(())
    }

    fn validate_target(&self, at: &str, value: &str) -> Result<(), ConfigError> {
        if value.is_empty() || value.len() > MAX_TARGET_LEN || value.chars().any(char::is_control) {
            return Err(field_error(
                at,
                format!("must be 1-{MAX_TARGET_LEN} bytes without control characters"),
            ));
        }
        let lower = value.to_ascii_lowercase();
        let url_userinfo = ["postgres://", "postgresql://", "http://"]
            .iter()
            .find_map(|scheme| lower.strip_prefix(scheme))
            .map(|rest| {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                authority
                    .rsplit_once('@')
                    .is_some_and(|(userinfo, _)| userinfo.contains(':'))
            });
        if lower.contains("password") || url_userinfo == Some(true) {
            return Err(field_error(
                at,
                "must not hold a password (the policy is public through GET /v1/policy); \
                 use password_env",
            ));
        }
        if self.kind == ProbeKind::Http && !lower.starts_with("http://") {
            return Err(field_error(
                at,
                "must be an http:// URL (https is not supported)",
            ));
        }
        Ok(())
    }

    fn is_set(&self, name: &str) -> bool {
        match name {
            "dsn" => self.dsn.is_some(),
            "password_env" => self.password_env.is_some(),
            "url" => self.url.is_some(),
            "connections_percent" => self.connections_percent.is_some(),
            "lock_waits" => self.lock_waits.is_some(),
            "query_latency_ms" => self.query_latency_ms.is_some(),
            "latency_ms" => self.latency_ms.is_some(),
            "non_2xx" => self.non_2xx.is_some(),
            _ => false,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            ProbeKind::Postgres => "postgres",
            ProbeKind::Http => "http",
        }
    }
}

/// Checks every probe (fields named `probes[i].field`, as the parser names them) and that
/// there are at most [`MAX_PROBES`] with unique names.
pub fn validate_probes(probes: &[ProbeSpec]) -> Result<(), ConfigError> {
    if probes.len() > MAX_PROBES {
        return Err(field_error(
            "probes",
            format!("more than {MAX_PROBES} probes"),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, probe) in probes.iter().enumerate() {
        let at = format!("probes[{i}]");
        probe.validate(&at)?;
        if !names.insert(probe.name.as_str()) {
            return Err(field_error(
                format!("{at}.name"),
                format!("`{}` names two probes", probe.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_inclusive() {
        let t = Thresholds {
            degraded: 5,
            saturated: 20,
        };
        assert_eq!(t.level(4), ProbeLevel::Ok);
        assert_eq!(t.level(5), ProbeLevel::Degraded);
        assert_eq!(t.level(19), ProbeLevel::Degraded);
        assert_eq!(t.level(20), ProbeLevel::Saturated);
    }
}
