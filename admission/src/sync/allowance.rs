//! The allowance: what a good sync reply is worth, kept in shared data for every worker.
//! A reply is checked whole; absurd numbers are capped by the static configuration, so an
//! allowance can only tighten this Envoy's own limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{SyncFailure, ALLOWANCE_KEY};
use crate::config::parse_json;
use crate::wire::{ResourceHealth, SyncReply};
use crate::{Bulkhead, GateConfig, SharedData};

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

/// Turns a callout's outcome into allowance `seq`; `status` is `None` when no response came.
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
    let consistent = |b: &Bulkhead| b.reserved <= b.max.unwrap_or(u32::MAX);
    if !reply
        .tenants
        .values()
        .chain(reply.classes.values())
        .all(consistent)
    {
        return Err(SyncFailure::Invalid);
    }
    let valid_until_ms = now_ms.saturating_add(reply.stale_after_ms.min(stale_after_ms));
    if valid_until_ms <= now_ms {
        // Stale on arrival: nothing to put in force.
        return Err(SyncFailure::Invalid);
    }
    Ok(Allowance {
        seq,
        policy_version: reply.policy_version,
        max_inflight: reply.max_inflight.min(static_config.max_inflight),
        tenants: reply.tenants,
        classes: reply.classes,
        valid_until_ms,
        degraded: reply.degraded,
        health: reply.health,
    })
}

/// The allowance in shared data, if one is there and parses.
pub fn load_allowance(store: &impl SharedData) -> Option<Allowance> {
    let (bytes, _) = store.get(ALLOWANCE_KEY).ok()?;
    serde_json::from_slice(&bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use proptest::prelude::*;

    fn static_config() -> GateConfig {
        GateConfig::parse(
            br#"{"max_inflight": 100, "tenants": {"acme": {"reserved": 20, "max": 50}, "*": {"max": 30}},
                 "default_class": "i", "classes": {"i": {"reserved": 40}, "b": {"max": 60}},
                 "control": {"cluster": "wipgate_control"}}"#,
        )
        .unwrap()
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
    fn a_good_reply_tightens_the_static_limits() {
        let a = reply(GOOD).unwrap();
        assert_eq!((a.seq, a.max_inflight, a.valid_until_ms), (7, 40, 14_500));
        let e = Limits::build(&static_config(), Some(&a), 2_000);
        assert_eq!((e.seq, e.policy_version), (Some(7), Some(3)));
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
        let e = Limits::build(&static_config(), Some(&reply(&degraded).unwrap()), 2_000);
        assert_eq!((e.config.max_inflight, e.saturated), (20, false));
        assert!(
            e.config.classes["i"].reserved <= 20,
            "reservations follow the lower limit"
        );
        let saturated = GOOD.replace(
            r#""stale_after_ms": 13500"#,
            r#""stale_after_ms": 13500, "health": {"state": "saturated"}"#,
        );
        let e = Limits::build(&static_config(), Some(&reply(&saturated).unwrap()), 2_000);
        assert!(e.saturated);
        assert!(!Limits::build(&static_config(), None, 0).saturated);
    }

    #[test]
    fn past_the_stale_window_the_last_allowance_holds_never_the_static_limit() {
        let a = reply(GOOD).unwrap();
        // Past the stale window: the last share (40) and acme's fleet entry, not 100.
        let e = Limits::build(&static_config(), Some(&a), 14_500);
        assert_eq!((e.seq, e.config.max_inflight), (Some(7), 40));
        assert_eq!(e.config.tenants["acme"].reserved, 5);
        assert!(!e.on_static());
        assert_eq!(e.valid_until_ms, u64::MAX, "until a new allowance arrives");
        // A share of 0 does not shut the Envoy for the length of an outage.
        let zero = Allowance {
            max_inflight: 0,
            ..a.clone()
        };
        assert_eq!(
            Limits::build(&static_config(), Some(&zero), 14_500)
                .config
                .max_inflight,
            1
        );
        // Old health is not kept.
        let saturated = Allowance {
            health: ResourceHealth::Saturated,
            ..a.clone()
        };
        assert!(!Limits::build(&static_config(), Some(&saturated), 14_500).saturated);
        // Without any allowance: the static configuration.
        assert_eq!(
            Limits::build(&static_config(), None, 0).config,
            static_config()
        );
    }

    #[test]
    fn an_explicit_fallback_applies_without_a_fresh_allowance() {
        let config = GateConfig::parse(
            br#"{"max_inflight": 100, "tenants": {"acme": {"reserved": 20, "max": 50}},
                 "control": {"cluster": "c", "fallback": {"max_inflight": 10}}}"#,
        )
        .unwrap();
        let before = Limits::build(&config, None, 0);
        assert_eq!(before.config.max_inflight, 10);
        assert!(
            before.config.tenants["acme"].reserved <= 10,
            "reservations fit"
        );
        let a = reply(GOOD).unwrap();
        assert_eq!(
            Limits::build(&config, Some(&a), 2_000).config.max_inflight,
            40
        );
        assert_eq!(
            Limits::build(&config, Some(&a), 14_500).config.max_inflight,
            10
        );
        let zero =
            br#"{"max_inflight": 1, "control": {"cluster": "c", "fallback": {"max_inflight": 0}}}"#;
        assert_eq!(
            GateConfig::parse(zero).unwrap_err().field,
            "control.fallback.max_inflight"
        );
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
        let stale = GOOD.replace(r#""stale_after_ms": 13500"#, r#""stale_after_ms": 0"#);
        assert_eq!(run(Some(200), &stale), Err(SyncFailure::Invalid));
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

    proptest! {
        /// Whatever a reply says, the limits in force stay within the static configuration
        /// and reservations always fit.
        #[test]
        fn limits_in_force_keep_the_invariants(
            max in any::<u32>(),
            shares in proptest::collection::vec((0u32..200, proptest::option::of(0u32..300)), 0..4),
        ) {
            let names = ["acme", "*", "zed", "other"];
            let tenants: BTreeMap<String, Bulkhead> = shares.iter().enumerate()
                .map(|(i, (r, m))| (names[i].to_owned(), Bulkhead { reserved: (*r).min(m.unwrap_or(u32::MAX)), max: *m }))
                .collect();
            let a = Allowance { seq: 1, policy_version: 1, max_inflight: max, tenants, classes: BTreeMap::new(), valid_until_ms: 10, degraded: false, health: ResourceHealth::Degraded { limit_percent: 40 } };
            let e = Limits::build(&static_config(), Some(&a), 0);
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
