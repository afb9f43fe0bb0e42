//! The sync's state machine in one VM: on a tick, claim the lease and make the call if it
//! is due; on the response, turn it into the allowance in shared data and announce it. A
//! failed call keeps the last good allowance and hands the unsent counts to the next report.

use super::{
    accept_reply, build_report, load_allowance, Allowance, Reported, SyncFailure, SyncLease,
    ALLOWANCE_KEY, LEASE_KEY, SYNC_PATH,
};
use crate::admitter::Admitter;
use crate::config::ControlConfig;
use crate::host::{Callout, Event, Host};
use crate::limits::past_stale;
use crate::log_limit::LogLimit;
use crate::wire::{InForce, PROTOCOL_VERSION};
use crate::{CasError, SharedData};

/// This VM's call under way.
#[derive(Debug)]
struct Pending {
    token: u32,
    lease: SyncLease,
    /// The counters the report carried, remembered once it is delivered.
    remembered: Reported,
}

/// One per VM with a `control` configuration.
#[derive(Debug)]
pub struct SyncDriver {
    control: ControlConfig,
    instance: String,
    /// This process's nonce ([`super::process_nonce`]), sent with every report.
    nonce: Option<String>,
    pending: Option<Pending>,
    log: LogLimit,
}

impl SyncDriver {
    /// A driver reporting as `instance` (see [`super::instance_id`]).
    pub fn new(control: ControlConfig, instance: String) -> Self {
        Self {
            control,
            instance,
            nonce: None,
            pending: None,
            log: LogLimit::default(),
        }
    }

    /// Sends `nonce` with every report, so that two processes on one instance id are told
    /// apart by the control service.
    #[must_use]
    pub fn with_nonce(mut self, nonce: String) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// The id this Envoy reports under.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How often the host should tick: often enough to call on time.
    pub fn tick_period_ms(&self) -> u64 {
        (self.control.interval_ms / 4).clamp(50, 1_000)
    }

    /// Whether this VM has a call under way.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes the call if it is due and this VM wins the lease.
    pub fn on_tick(&mut self, host: &impl Host, admitter: &Admitter, now_ms: u64) {
        if self.pending.is_some() {
            return;
        }
        let Ok((bytes, cas)) = host.get(LEASE_KEY) else {
            return;
        };
        let lease: SyncLease = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let Some(claimed) = lease.claim(now_ms, &self.control) else {
            return;
        };
        if !write_lease(host, &claimed, cas) {
            return; // another worker claimed it first
        }
        let (mut report, remembered) = build_report(
            &self.instance,
            admitter.inflight(host),
            &host.usage(),
            &claimed.reported,
            admitter.limits(host, now_ms).policy_version,
        );
        report.version = Some(PROTOCOL_VERSION);
        report.nonce.clone_from(&self.nonce);
        report.max_inflight = Some(admitter.config().max_inflight);
        // What this Envoy enforces until the reply arrives (or for good, if it is lost): the
        // service keeps counting it against the fleet until a report shows less. Past the
        // stale window that is what the last allowance still holds.
        let fallback = self.control.fallback.map(|f| f.max_inflight);
        report.in_force = load_allowance(host).map(|a| {
            let a = if now_ms < a.valid_until_ms {
                a
            } else {
                past_stale(&a, fallback)
            };
            InForce {
                max_inflight: a.max_inflight,
                tenants: a.tenants,
                classes: a.classes,
            }
        });
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let call = Callout {
            cluster: &self.control.cluster,
            authority: self
                .control
                .authority
                .as_deref()
                .unwrap_or(&self.control.cluster),
            path: SYNC_PATH,
            body: &body,
            timeout_ms: self.control.timeout_ms,
            bearer: self.control.token.as_deref(),
        };
        match host.dispatch(&call) {
            Ok(token) => {
                self.pending = Some(Pending {
                    token,
                    lease: claimed,
                    remembered,
                });
            }
            Err(detail) => {
                self.failed(host, SyncFailure::Dispatch, &detail, now_ms);
                end_lease(host, &claimed, claimed.reported.clone());
            }
        }
    }

    /// The callout `token` ended: `status` is `None` when no response came (timeout, reset).
    /// Responses to calls this VM is not waiting for are ignored.
    pub fn on_response(
        &mut self,
        host: &impl Host,
        admitter: &Admitter,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) {
        let Some(pending) = self.pending.take_if(|p| p.token == token) else {
            return;
        };
        let accepted = accept_reply(
            status,
            body,
            &self.instance,
            admitter.config(),
            self.control.stale_after_ms,
            0,
            now_ms,
        );
        match accepted {
            Ok(allowance) => {
                let degraded = allowance.degraded;
                if let Some(seq) = store_allowance(host, allowance) {
                    admitter.publish_limits(host, seq, now_ms);
                    host.record(Event::Synced(Ok(())));
                    if degraded && self.log.allow(now_ms) {
                        log::warn!(
                            "the control service answered from its last known state (degraded)"
                        );
                    }
                } else {
                    let detail = "could not store the allowance";
                    self.failed(host, SyncFailure::Invalid, detail, now_ms);
                }
                // The service got the report either way.
                end_lease(host, &pending.lease, pending.remembered);
            }
            Err(kind) => {
                let detail = match status {
                    Some(s) => format!("status {s}"),
                    None => "no response".to_owned(),
                };
                self.failed(host, kind, &detail, now_ms);
                // Not delivered: the next report carries these counts again.
                end_lease(host, &pending.lease, pending.lease.reported.clone());
            }
        }
    }

    fn failed(&self, host: &impl Host, kind: SyncFailure, detail: &str, now_ms: u64) {
        host.record(Event::Synced(Err(kind)));
        if self.log.allow(now_ms) {
            log::warn!(
                "sync with the control service failed ({}: {detail}); keeping the last good limits",
                kind.as_str()
            );
        }
    }
}

/// Stores `allowance` as the next in sequence (compare-and-swap, so two VMs that both got a
/// reply never store two allowances under one `seq`); its `seq`, or `None` if it could not.
fn store_allowance(store: &impl SharedData, mut allowance: Allowance) -> Option<u64> {
    for _ in 0..3 {
        let (bytes, cas) = store.get(ALLOWANCE_KEY).ok()?;
        let current: Option<Allowance> = bytes.and_then(|b| serde_json::from_slice(&b).ok());
        // A seq at its end (only a corrupt record can hold one) stores nothing.
        allowance.seq = current.map_or(0, |a| a.seq).checked_add(1)?;
        let json = serde_json::to_vec(&allowance).ok()?;
        match store.set(ALLOWANCE_KEY, &json, cas) {
            Ok(()) => return Some(allowance.seq),
            Err(CasError::Mismatch) => continue,
            Err(CasError::Host(_)) => return None,
        }
    }
    None
}

fn write_lease(store: &impl SharedData, lease: &SyncLease, cas: Option<u32>) -> bool {
    serde_json::to_vec(lease).is_ok_and(|json| store.set(LEASE_KEY, &json, cas).is_ok())
}

/// Frees the lease for the next interval, unless someone took it over meanwhile.
fn end_lease(store: &impl SharedData, ours: &SyncLease, reported: Reported) {
    let Ok((Some(bytes), cas)) = store.get(LEASE_KEY) else {
        return;
    };
    let current: Option<SyncLease> = serde_json::from_slice(&bytes).ok();
    if current.is_some_and(|c| c.next_due_ms == ours.next_due_ms) {
        write_lease(store, &ours.done(reported), cas);
    }
}
