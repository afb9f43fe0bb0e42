//! The filter's side of the periodic sync with the control service: who calls, when, what a
//! reply is worth, and which limits are in force — as pure functions of `now` and bytes.
//!
//! One Envoy makes one call per interval, whatever its number of worker threads: the
//! [`SyncLease`] in shared data says when the next call is due and whether one is under
//! way; a worker that wins the compare-and-swap on it makes the call. A good reply becomes
//! the [`Allowance`] in shared data, valid until its stale deadline; a failed call never
//! clears a good allowance. Past the deadline the filter falls back to its static
//! configuration: never zero, never unlimited.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{parse_json, ControlConfig};
use crate::wire::{ResourceHealth, SyncReply, SyncRequest, UsageReport};
use crate::{Bulkhead, GateConfig};

/// Shared-data key of the [`SyncLease`].
pub const LEASE_KEY: &str = "wipgate.sync.lease.v1";
/// Shared-data key of the current [`Allowance`].
pub const ALLOWANCE_KEY: &str = "wipgate.sync.allowance.v1";
/// Shared-data key of this Envoy's generated instance id (when the node id is not set).
pub const INSTANCE_KEY: &str = "wipgate.instance.v1";

/// Extra time a caller holds the lease beyond the call's own timeout, so a slow host does
/// not let a second call start; a VM that dies mid-call blocks the next one this long.
const LEASE_GRACE_MS: u64 = 1_000;

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
    /// A reply that parses but makes no sense (for another instance, inconsistent numbers).
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

/// Who calls next and when; one per Envoy, in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncLease {
    /// When the next call is due (ms since the epoch).
    pub next_due_ms: u64,
    /// A call is under way until then.
    pub busy_until_ms: u64,
    /// Admitted and rejected counter values at the last report, per tenant and class
    /// label, so each report carries what happened since the previous one.
    #[serde(default)]
    pub reported: BTreeMap<String, (u64, u64)>,
}

impl SyncLease {
    /// If a call is due at `now` and none is under way, the lease as the caller writes it
    /// to claim the call; `None` when this worker should not call.
    pub fn claim(&self, now_ms: u64, control: &ControlConfig) -> Option<SyncLease> {
        if now_ms < self.next_due_ms || now_ms < self.busy_until_ms {
            return None;
        }
        Some(SyncLease {
            next_due_ms: now_ms + control.interval_ms,
            busy_until_ms: now_ms + control.timeout_ms + LEASE_GRACE_MS,
            reported: self.reported.clone(),
        })
    }

    /// The lease after the call ended (either way): the next caller may go when due.
    pub fn done(&self, reported: BTreeMap<String, (u64, u64)>) -> SyncLease {
        SyncLease {
            next_due_ms: self.next_due_ms,
            busy_until_ms: 0,
            reported,
        }
    }
}

/// Limits received from the control service, as kept in shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Increases with every allowance stored, so workers notice a new one cheaply.
    pub seq: u64,
    /// The fleet policy version it came from.
    pub policy_version: u64,
    /// This Envoy's share of the fleet limit.
    pub max_inflight: u32,
    /// Per-tenant shares (each the stricter of the share and the static entry); tenants
    /// not listed keep their static bulkheads.
    pub tenants: BTreeMap<String, Bulkhead>,
    /// Per-class shares; classes not listed keep their static bulkheads.
    pub classes: BTreeMap<String, Bulkhead>,
    /// Past this (ms since the epoch) the allowance is stale: static configuration again.
    pub valid_until_ms: u64,
    /// The control service said it answered from its last known state.
    pub degraded: bool,
    /// The protected resource's health by the control service's probes.
    #[serde(default)]
    pub health: ResourceHealth,
}

/// The limits a request is admitted against.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveLimits {
    /// The validated configuration with the allowance applied.
    pub config: GateConfig,
    /// The allowance's `seq`, or `None` on the static configuration.
    pub seq: Option<u64>,
    /// The protected resource is saturated (only reserved classes go).
    pub saturated: bool,
}

/// Turns a callout's outcome into an allowance; `status` is `None` when no response came.
/// Absurd numbers are capped by the static configuration (the allowance can only tighten
/// this Envoy's own limits), and a reply that could not be honoured is refused whole.
pub fn accept_reply(
    status: Option<u16>,
    body: &[u8],
    instance: &str,
    static_config: &GateConfig,
    stale_after_ms: u64,
    seq: u64,
    now_ms: u64,
) -> Result<Allowance, SyncFailure> {
    match status {
        // Envoy answers a callout that ran past its timeout with its own 504.
        None | Some(504) => return Err(SyncFailure::Timeout),
        Some(200) => {}
        Some(_) => return Err(SyncFailure::Status),
    }
    let reply: SyncReply = parse_json(body).map_err(|_| SyncFailure::Parse)?;
    if reply.instance != instance {
        return Err(SyncFailure::Invalid);
    }
    let cap = |b: &Bulkhead| b.reserved <= b.max.unwrap_or(u32::MAX);
    if !reply
        .tenants
        .values()
        .chain(reply.classes.values())
        .all(cap)
    {
        return Err(SyncFailure::Invalid);
    }
    let allowance = Allowance {
        seq,
        policy_version: reply.policy_version,
        max_inflight: reply.max_inflight.min(static_config.max_inflight),
        tenants: reply.tenants,
        classes: reply.classes,
        valid_until_ms: now_ms.saturating_add(reply.stale_after_ms.min(stale_after_ms)),
        degraded: reply.degraded,
        health: reply.health,
    };
    effective(static_config, Some(&allowance), now_ms)
        .seq
        .map(|_| allowance)
        .ok_or(SyncFailure::Invalid)
}

/// The limits in force at `now`: the allowance while it is fresh and fits, else the static
/// configuration. Reservations that no longer fit the fleet share are scaled down (never
/// up), so the bulkhead invariants hold under any share.
pub fn effective(
    static_config: &GateConfig,
    allowance: Option<&Allowance>,
    now_ms: u64,
) -> EffectiveLimits {
    let fresh = allowance.filter(|a| now_ms < a.valid_until_ms);
    let Some(a) = fresh else {
        return EffectiveLimits {
            config: static_config.clone(),
            seq: None,
            saturated: false,
        };
    };
    let mut config = static_config.clone();
    // A degraded resource scales this Envoy's limit down; reservations follow below.
    config.max_inflight = a
        .health
        .scale(a.max_inflight.min(static_config.max_inflight));
    for (map, shares) in [
        (&mut config.tenants, &a.tenants),
        (&mut config.classes, &a.classes),
    ] {
        for (name, share) in shares {
            // A tenant or class the fleet policy names but this Envoy's configuration does
            // not is enforced as the fleet says.
            let merged = map.get(name).map_or(*share, |own| tighter(*own, *share));
            map.insert(name.clone(), merged);
        }
        fit_reservations(map, config.max_inflight);
    }
    EffectiveLimits {
        config,
        seq: Some(a.seq),
        saturated: a.health == ResourceHealth::Saturated,
    }
}

/// The stricter of two bulkheads, entry by entry.
fn tighter(a: Bulkhead, b: Bulkhead) -> Bulkhead {
    let max = match (a.max, b.max) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    let reserved = a.reserved.min(b.reserved);
    Bulkhead {
        reserved: reserved.min(max.unwrap_or(u32::MAX)),
        max,
    }
}

/// Scales reservations down until they add up to at most `limit`.
fn fit_reservations(map: &mut BTreeMap<String, Bulkhead>, limit: u32) {
    let sum: u64 = map.values().map(|b| u64::from(b.reserved)).sum();
    if sum <= u64::from(limit) {
        return;
    }
    for b in map.values_mut() {
        let scaled = u64::from(b.reserved) * u64::from(limit) / sum;
        b.reserved = u32::try_from(scaled).unwrap_or(0);
    }
}

/// The report for one sync: this Envoy's in-flight now, and per label the in-flight now
/// and the counters' growth since `previous`. Returns the report and the new counter
/// values to remember.
pub fn build_report(
    instance: &str,
    inflight: u64,
    usage: &BTreeMap<String, (u64, u64, u64)>,
    previous: &BTreeMap<String, (u64, u64)>,
    policy_version: Option<u64>,
) -> (SyncRequest, BTreeMap<String, (u64, u64)>) {
    let mut tenants = BTreeMap::new();
    let mut classes = BTreeMap::new();
    let mut remembered = BTreeMap::new();
    for (label, (now_inflight, admitted, rejected)) in usage {
        let (before_admitted, before_rejected) = previous.get(label).copied().unwrap_or((0, 0));
        let report = UsageReport {
            inflight: u32::try_from(*now_inflight).unwrap_or(u32::MAX),
            admitted: admitted.saturating_sub(before_admitted),
            rejected: rejected.saturating_sub(before_rejected),
        };
        remembered.insert(label.clone(), (*admitted, *rejected));
        match label.split_once(':') {
            Some(("tenant", name)) => tenants.insert(name.to_owned(), report),
            Some(("class", name)) => classes.insert(name.to_owned(), report),
            _ => None,
        };
    }
    let request = SyncRequest {
        instance: instance.to_owned(),
        inflight: u32::try_from(inflight).unwrap_or(u32::MAX),
        tenants,
        classes,
        policy_version,
    };
    (request, remembered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn static_config() -> GateConfig {
        GateConfig::parse(
            br#"{"max_inflight": 100, "tenants": {"acme": {"reserved": 20, "max": 50}, "*": {"max": 30}},
                 "default_class": "i", "classes": {"i": {"reserved": 40}, "b": {"max": 60}},
                 "control": {"cluster": "wipgate_control"}}"#,
        )
        .unwrap()
    }

    fn control() -> ControlConfig {
        static_config().control.unwrap()
    }

    fn reply(json: &str) -> Result<Allowance, SyncFailure> {
        accept_reply(
            Some(200),
            json.as_bytes(),
            "envoy-1",
            &static_config(),
            15_000,
            7,
            1_000,
        )
    }

    const GOOD: &str = r#"{"instance": "envoy-1", "policy_version": 3, "max_inflight": 40,
        "tenants": {"acme": {"reserved": 5, "max": 3000}}, "classes": {},
        "degraded": false, "stale_after_ms": 13500}"#;

    #[test]
    fn one_call_per_interval_and_none_while_one_is_under_way() {
        let lease = SyncLease::default();
        let claimed = lease.claim(1_000, &control()).unwrap();
        assert_eq!(claimed.next_due_ms, 2_000);
        assert!(claimed.claim(1_100, &control()).is_none(), "call under way");
        let done = claimed.done(BTreeMap::new());
        assert!(done.claim(1_900, &control()).is_none(), "not due yet");
        assert!(done.claim(2_000, &control()).is_some());
        // A caller that died mid-call blocks the next one only until its lease runs out.
        assert!(claimed.claim(2_000, &control()).is_none());
        assert!(claimed
            .claim(1_000 + 250 + LEASE_GRACE_MS, &control())
            .is_some());
    }

    #[test]
    fn a_good_reply_tightens_the_static_limits() {
        let a = reply(GOOD).unwrap();
        assert_eq!((a.seq, a.max_inflight, a.valid_until_ms), (7, 40, 14_500));
        let e = effective(&static_config(), Some(&a), 2_000);
        assert_eq!(e.seq, Some(7));
        assert_eq!(e.config.max_inflight, 40);
        assert_eq!(
            e.config.tenants["acme"],
            Bulkhead {
                reserved: 5,
                max: Some(50)
            }
        );
        // Class reservations (40) still fit the share of 40.
        assert_eq!(e.config.classes["i"].reserved, 40);
    }

    #[test]
    fn health_scales_the_limit_or_marks_saturation() {
        let degraded = GOOD.replace(
            r#""stale_after_ms": 13500"#,
            r#""stale_after_ms": 13500, "health": {"state": "degraded", "limit_percent": 50}"#,
        );
        let e = effective(&static_config(), Some(&reply(&degraded).unwrap()), 2_000);
        assert_eq!((e.config.max_inflight, e.saturated), (20, false));
        assert!(
            e.config.classes["i"].reserved <= 20,
            "reservations follow the lower limit"
        );
        let saturated = GOOD.replace(
            r#""stale_after_ms": 13500"#,
            r#""stale_after_ms": 13500, "health": {"state": "saturated"}"#,
        );
        let e = effective(&static_config(), Some(&reply(&saturated).unwrap()), 2_000);
        assert!(e.saturated);
        assert!(!effective(&static_config(), None, 0).saturated);
    }

    #[test]
    fn stale_or_absent_allowance_means_static_configuration() {
        let a = reply(GOOD).unwrap();
        let e = effective(&static_config(), Some(&a), 14_500);
        assert_eq!((e.seq, e.config.max_inflight), (None, 100));
        assert_eq!(effective(&static_config(), None, 0).config, static_config());
    }

    #[test]
    fn failures_are_named() {
        let run = |status, body: &str| {
            accept_reply(
                status,
                body.as_bytes(),
                "envoy-1",
                &static_config(),
                15_000,
                1,
                0,
            )
        };
        assert_eq!(run(None, ""), Err(SyncFailure::Timeout));
        assert_eq!(
            run(Some(504), "upstream request timeout"),
            Err(SyncFailure::Timeout)
        );
        assert_eq!(run(Some(500), GOOD), Err(SyncFailure::Status));
        assert_eq!(run(Some(200), "<html>"), Err(SyncFailure::Parse));
        assert_eq!(
            run(Some(200), r#"{"instance": "envoy-1"}"#),
            Err(SyncFailure::Parse)
        );
        assert_eq!(
            run(Some(200), &GOOD.replace("envoy-1", "other")),
            Err(SyncFailure::Invalid)
        );
        let inconsistent = GOOD.replace(
            r#""reserved": 5, "max": 3000"#,
            r#""reserved": 9, "max": 3"#,
        );
        assert_eq!(run(Some(200), &inconsistent), Err(SyncFailure::Invalid));
    }

    #[test]
    fn absurd_numbers_are_capped_by_the_static_configuration() {
        let absurd = GOOD
            .replace(r#""max_inflight": 40"#, r#""max_inflight": 4294967295"#)
            .replace(
                r#""stale_after_ms": 13500"#,
                r#""stale_after_ms": 18446744073709551615"#,
            );
        let a = reply(&absurd).unwrap();
        assert_eq!(a.max_inflight, 100);
        assert_eq!(
            a.valid_until_ms, 16_000,
            "never longer than the configured stale window"
        );
    }

    #[test]
    fn report_carries_counts_since_the_previous_one() {
        let usage = BTreeMap::from([
            ("tenant:acme".to_owned(), (3, 10, 2)),
            ("class:b".to_owned(), (1, 4, 0)),
        ]);
        let previous = BTreeMap::from([("tenant:acme".to_owned(), (7, 2))]);
        let (req, remembered) = build_report("envoy-1", 4, &usage, &previous, Some(3));
        assert_eq!(
            req.tenants["acme"],
            UsageReport {
                inflight: 3,
                admitted: 3,
                rejected: 0
            }
        );
        assert_eq!(req.classes["b"].admitted, 4);
        assert_eq!(remembered["tenant:acme"], (10, 2));
        assert!(req.validate().is_ok());
    }

    proptest! {
        /// Whatever a reply says, the limits in force stay within the static configuration,
        /// never zero... unless the share is zero, and reservations always fit.
        #[test]
        fn effective_limits_keep_the_invariants(
            max in any::<u32>(),
            shares in proptest::collection::vec((0u32..200, proptest::option::of(0u32..300)), 0..4),
        ) {
            let names = ["acme", "*", "zed", "other"];
            let tenants: BTreeMap<String, Bulkhead> = shares.iter().enumerate()
                .map(|(i, (r, m))| (names[i].to_owned(), Bulkhead { reserved: (*r).min(m.unwrap_or(u32::MAX)), max: *m }))
                .collect();
            let a = Allowance { seq: 1, policy_version: 1, max_inflight: max, tenants, classes: BTreeMap::new(), valid_until_ms: 10, degraded: false, health: ResourceHealth::Degraded { limit_percent: 40 } };
            let e = effective(&static_config(), Some(&a), 0);
            prop_assert!(e.config.max_inflight <= 100);
            let reserved: u64 = e.config.tenants.values().map(|b| u64::from(b.reserved)).sum();
            prop_assert!(reserved <= u64::from(e.config.max_inflight));
            for b in e.config.tenants.values() {
                prop_assert!(b.reserved <= b.max.unwrap_or(u32::MAX));
            }
        }

        #[test]
        fn accept_reply_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), status in proptest::option::of(any::<u16>())) {
            let _ = accept_reply(status, &body, "envoy-1", &static_config(), 15_000, 1, 0);
        }
    }
}
