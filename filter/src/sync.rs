//! The periodic sync with the control service, driven by the root context: at most one
//! callout per Envoy per interval (the lease in shared data picks the worker), the reply
//! turned into an allowance in shared data and announced through the ledger.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

use proxy_wasm::hostcalls;
use wipgate_admission::config::ControlConfig;
use wipgate_admission::control_sync::{
    accept_reply, build_report, SyncFailure, SyncLease, ALLOWANCE_KEY, INSTANCE_KEY, LEASE_KEY,
};
use wipgate_admission::SharedData;

use crate::host::HostSharedData;
use crate::limits::load_allowance;
use crate::plugin::Plugin;

/// This VM's call under way.
struct Pending {
    token: u32,
    lease: SyncLease,
    remembered: BTreeMap<String, (u64, u64)>,
}

/// One per VM with a `control` configuration.
pub struct SyncDriver {
    control: ControlConfig,
    instance: String,
    pending: Option<Pending>,
    last_log_ms: Cell<u64>,
}

impl SyncDriver {
    pub fn new(control: ControlConfig, instance: String) -> Self {
        Self {
            control,
            instance,
            pending: None,
            last_log_ms: Cell::new(0),
        }
    }

    /// How often the root context should tick: often enough to call on time.
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis((self.control.interval_ms / 4).clamp(50, 1_000))
    }

    /// Makes the call if it is due and this VM wins the lease.
    pub fn on_tick(&mut self, plugin: &Plugin, now_ms: u64) {
        if self.pending.is_some() {
            return;
        }
        let Ok((bytes, cas)) = HostSharedData.get(LEASE_KEY) else {
            return;
        };
        let lease: SyncLease = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let Some(claimed) = lease.claim(now_ms, &self.control) else {
            return;
        };
        if !write_lease(&claimed, cas) {
            return; // another worker claimed it first
        }
        let version = plugin.limits(now_ms).policy_version;
        let (report, remembered) = build_report(
            &self.instance,
            plugin.inflight(),
            &plugin.metrics.usage(),
            &claimed.reported,
            version,
        );
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let authority = self
            .control
            .authority
            .as_deref()
            .unwrap_or(&self.control.cluster);
        let headers = vec![
            (":method", "POST"),
            (":path", "/v1/sync"),
            (":authority", authority),
            ("content-type", "application/json"),
        ];
        let timeout = Duration::from_millis(self.control.timeout_ms);
        match hostcalls::dispatch_http_call(
            &self.control.cluster,
            headers,
            Some(&body),
            vec![],
            timeout,
        ) {
            Ok(token) => {
                self.pending = Some(Pending {
                    token,
                    lease: claimed,
                    remembered,
                })
            }
            Err(status) => {
                self.failed(
                    plugin,
                    SyncFailure::Dispatch,
                    &format!("{status:?}"),
                    now_ms,
                );
                end_lease(&claimed, claimed.reported.clone());
            }
        }
    }

    /// The callout ended: `status` is `None` when no response came (timeout, reset).
    pub fn on_response(
        &mut self,
        plugin: &Plugin,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) {
        let Some(pending) = self.pending.take_if(|p| p.token == token) else {
            return;
        };
        let seq = load_allowance().map_or(0, |a| a.seq) + 1;
        let accepted = accept_reply(
            status,
            body,
            &self.instance,
            &plugin.static_config,
            self.control.stale_after_ms,
            seq,
            now_ms,
        );
        match accepted {
            Ok(allowance) => {
                let stored = serde_json::to_vec(&allowance)
                    .ok()
                    .is_some_and(|json| HostSharedData.set(ALLOWANCE_KEY, &json, None).is_ok());
                if stored {
                    plugin.publish_limits(seq, now_ms);
                    plugin.metrics.sync(Ok(()));
                    if allowance.degraded && Plugin::may_log(&self.last_log_ms, now_ms) {
                        log::warn!(
                            "the control service answered from its last known state (degraded)"
                        );
                    }
                } else {
                    self.failed(
                        plugin,
                        SyncFailure::Invalid,
                        "could not store the allowance",
                        now_ms,
                    );
                }
                end_lease(&pending.lease, pending.remembered);
            }
            Err(kind) => {
                let detail = match status {
                    Some(s) => format!("status {s}"),
                    None => "no response".to_owned(),
                };
                self.failed(plugin, kind, &detail, now_ms);
                // Not delivered: the next report carries these counts again.
                end_lease(&pending.lease, pending.lease.reported.clone());
            }
        }
    }

    fn failed(&self, plugin: &Plugin, kind: SyncFailure, detail: &str, now_ms: u64) {
        plugin.metrics.sync(Err(kind));
        if Plugin::may_log(&self.last_log_ms, now_ms) {
            log::warn!(
                "sync with the control service failed ({}: {detail}); keeping the last good limits",
                kind.as_str()
            );
        }
    }
}

fn write_lease(lease: &SyncLease, cas: Option<u32>) -> bool {
    serde_json::to_vec(lease).is_ok_and(|json| HostSharedData.set(LEASE_KEY, &json, cas).is_ok())
}

/// Frees the lease for the next interval, unless someone took it over meanwhile.
fn end_lease(ours: &SyncLease, reported: BTreeMap<String, (u64, u64)>) {
    let Ok((Some(bytes), cas)) = HostSharedData.get(LEASE_KEY) else {
        return;
    };
    let current: Option<SyncLease> = serde_json::from_slice(&bytes).ok();
    if current.is_some_and(|c| c.next_due_ms == ours.next_due_ms) {
        write_lease(&ours.done(reported), cas);
    }
}

/// The instance id: Envoy's node id when set, else one generated once per Envoy and kept in
/// shared data (so every worker reports the same id).
pub fn instance_id(node_id: Option<Vec<u8>>, seed: u64) -> String {
    let node = node_id.and_then(|b| String::from_utf8(b).ok());
    if let Some(id) = node
        .filter(|id| !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic()))
    {
        return id;
    }
    let stored = HostSharedData.get(INSTANCE_KEY).ok().and_then(|(b, _)| b);
    if let Some(id) = stored.and_then(|b| String::from_utf8(b).ok()) {
        return id;
    }
    let id = format!("wipgate-{seed:016x}");
    let _ = HostSharedData.set(INSTANCE_KEY, id.as_bytes(), None);
    // Another VM may have written first: everyone uses what is stored.
    HostSharedData
        .get(INSTANCE_KEY)
        .ok()
        .and_then(|(b, _)| b)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or(id)
}
