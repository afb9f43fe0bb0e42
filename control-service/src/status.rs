//! `GET /v1/status`: the live fleet, computed from the store's instance records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wipgate_admission::config::WILDCARD_TENANT;
use wipgate_admission::wire::ResourceHealth;

use crate::fleet::{FleetPolicy, InstanceView};
use crate::probes::ProbeStatus;

/// The whole fleet as the store sees it now.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetStatus {
    /// The store's clock, ms since the epoch.
    pub now_ms: u64,
    /// Version of the policy in force.
    pub policy_version: u64,
    /// The policy's `global_max_inflight`.
    pub global_max_inflight: u32,
    /// Fleet totals.
    pub totals: Totals,
    /// Per policy tenant entry (`*` gathers the tenants not listed by name).
    pub tenants: BTreeMap<String, TenantStatus>,
    /// The live instances, each with its last report and allowance.
    pub instances: Vec<InstanceView>,
    /// The composite health this replica sends in its sync replies.
    pub health: ResourceHealth,
    /// Each bottleneck probe of this replica, by name.
    pub probes: Vec<ProbeStatus>,
}

/// Fleet totals.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Totals {
    /// Live instances.
    pub instances: u64,
    /// In flight through all live instances, as last reported.
    pub inflight: u64,
    /// Sum of the live instances' `max_inflight` allowances (never above the limit).
    pub allowance: u64,
    /// `inflight / global_max_inflight`.
    pub effective_load: f64,
}

/// One tenant entry across the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantStatus {
    /// In flight, fleet-wide, as last reported.
    pub inflight: u64,
    /// The policy's fleet-wide `max` (absent: none).
    pub max: Option<u32>,
    /// The policy's fleet-wide `reserved`.
    pub reserved: u32,
    /// Sum of the instances' `max` allowances for this entry.
    pub allowance_max: u64,
    /// Sum of the instances' `reserved` allowances for this entry.
    pub allowance_reserved: u64,
}

impl FleetStatus {
    /// Totals and per-tenant sums of `instances` under `policy`; no probes (the caller adds
    /// this replica's).
    pub fn new(
        now_ms: u64,
        policy: &FleetPolicy,
        policy_version: u64,
        instances: Vec<InstanceView>,
    ) -> Self {
        let mut tenants: BTreeMap<String, TenantStatus> = policy
            .tenants
            .iter()
            .map(|(name, b)| {
                let status = TenantStatus {
                    inflight: 0,
                    max: b.max,
                    reserved: b.reserved,
                    allowance_max: 0,
                    allowance_reserved: 0,
                };
                (name.clone(), status)
            })
            .collect();
        let (mut inflight, mut allowance) = (0u64, 0u64);
        for view in &instances {
            // No Envoy has more in flight than its own limit: a report cannot inflate the
            // fleet's load (which an autoscaler reads) beyond what it could carry.
            let own = |n: u32| view.report.max_inflight.map_or(n, |max| n.min(max));
            inflight += u64::from(own(view.report.inflight));
            allowance += u64::from(view.allowance.max_inflight);
            for (name, usage) in &view.report.tenants {
                let entry = if tenants.contains_key(name) {
                    name.as_str()
                } else {
                    WILDCARD_TENANT
                };
                if let Some(t) = tenants.get_mut(entry) {
                    t.inflight += u64::from(own(usage.inflight));
                }
            }
            for (name, b) in &view.allowance.tenants {
                if let Some(t) = tenants.get_mut(name) {
                    t.allowance_max += u64::from(b.max.unwrap_or(0));
                    t.allowance_reserved += u64::from(b.reserved);
                }
            }
        }
        let limit = policy.global_max_inflight;
        #[allow(clippy::cast_precision_loss)] // a load ratio does not need 53 bits
        let effective_load = inflight as f64 / f64::from(limit.max(1));
        Self {
            now_ms,
            policy_version,
            global_max_inflight: limit,
            totals: Totals {
                instances: instances.len() as u64,
                inflight,
                allowance,
                effective_load,
            },
            tenants,
            instances,
            health: ResourceHealth::Ok,
            probes: Vec::new(),
        }
    }
}
