//! The limits a request is admitted against: the control service's allowance while it is
//! fresh; past its stale window the last allowance still (or `control.fallback`), so a fleet
//! cut off from the control service never silently admits N x its static limits; the static
//! configuration (or the fallback) before the first allowance. Built once per allowance and
//! shared by every request of a VM, so no request parses JSON.

use std::collections::BTreeMap;

use crate::sync::Allowance;
use crate::wire::ResourceHealth;
use crate::{Bulkhead, GateConfig, Partitions};

/// One set of limits, immutable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The configuration with the allowance applied.
    pub config: GateConfig,
    /// Its partitions, ready for admission decisions.
    pub partitions: Partitions,
    /// The allowance's `seq`, or `None` on the static configuration.
    pub seq: Option<u64>,
    /// The fleet policy version of the allowance in force.
    pub policy_version: Option<u64>,
    /// Past this (ms since the epoch) these limits must be rebuilt.
    pub valid_until_ms: u64,
    /// The protected resource is saturated (only reserved classes go).
    pub saturated: bool,
}

impl Limits {
    /// The limits in force at `now`: the allowance while it is fresh; past its stale window
    /// the allowance as [`past_stale`] keeps it; without one the static configuration,
    /// within `control.fallback`. Reservations that no longer fit the fleet share are scaled
    /// down (never up), so the bulkhead invariants hold under any share.
    pub fn build(static_config: &GateConfig, allowance: Option<&Allowance>, now_ms: u64) -> Self {
        // An allowance is good for `stale_after_ms` at most from its arrival: one valid for
        // longer from now was stamped before the clock went back, and is stale (the next
        // sync is due at once after a jump either way).
        let stale_after = static_config.control.as_ref().map(|c| c.stale_after_ms);
        let fresh = |a: &Allowance| {
            now_ms < a.valid_until_ms
                && stale_after.map_or(true, |s| a.valid_until_ms <= now_ms.saturating_add(s))
        };
        let fallback = static_config
            .control
            .as_ref()
            .and_then(|c| c.fallback)
            .map(|f| f.max_inflight);
        let held;
        let a = match allowance {
            Some(a) if fresh(a) => a,
            Some(a) => {
                held = past_stale(a, fallback);
                &held
            }
            None => {
                let mut config = static_config.clone();
                if let Some(f) = fallback {
                    config.max_inflight = config.max_inflight.min(f);
                    for map in [&mut config.tenants, &mut config.classes] {
                        fit_reservations(map, config.max_inflight);
                    }
                }
                return Self::of(config, None);
            }
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
                // A tenant or class the fleet policy names but this Envoy's configuration
                // does not is enforced as the fleet says.
                let merged = map.get(name).map_or(*share, |own| tighter(*own, *share));
                map.insert(name.clone(), merged);
            }
            fit_reservations(map, config.max_inflight);
        }
        Self::of(config, Some(a))
    }

    fn of(config: GateConfig, allowance: Option<&Allowance>) -> Self {
        let saturated = allowance.is_some_and(|a| a.health == ResourceHealth::Saturated);
        Self {
            partitions: Partitions::new(&config).saturated(saturated),
            config,
            seq: allowance.map(|a| a.seq),
            policy_version: allowance.map(|a| a.policy_version),
            valid_until_ms: allowance.map_or(u64::MAX, |a| a.valid_until_ms),
            saturated,
        }
    }

    /// True on the static configuration (no fresh allowance).
    pub fn on_static(&self) -> bool {
        self.seq.is_none()
    }
}

/// What an allowance past its stale window still enforces, until a new one arrives: its
/// tenant and class entries, and its `max_inflight` (never below 1, so that a share of 0
/// does not shut this Envoy for the length of an outage), or `fallback` when set. The
/// probes' health is old news: `ok`. Valid until replaced.
pub fn past_stale(a: &Allowance, fallback: Option<u32>) -> Allowance {
    Allowance {
        max_inflight: fallback.unwrap_or(a.max_inflight.max(1)),
        valid_until_ms: u64::MAX,
        health: ResourceHealth::Ok,
        ..a.clone()
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
