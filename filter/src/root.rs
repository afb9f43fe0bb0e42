//! The root context: validates the plugin configuration once, ticks the heartbeat, hands the
//! sync's ticks and callout responses to the core, and, with the queue on, wakes the streams
//! whose wait ended (a slot handed over through the VM's shared queue, or a deadline).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};
use wipgate_admission::scope::{namespace, Scoped};
use wipgate_admission::sync::{instance_id, process_nonce};
use wipgate_admission::tick::TickSchedule;
use wipgate_admission::{Admitter, GateConfig, SyncDriver, Ticket};

use crate::host::{buffer, now_ms, now_us, property, status, ProxyHost};
use crate::http::{resolve, AdmissionContext};

/// How often each VM sends a heartbeat to the shared ledger (at least), in ms.
const HEARTBEAT_MS: u64 = 1_000;

/// What the root context and every stream of one VM share.
pub struct Plugin {
    /// The host, its shared data under this configuration's namespace (one ledger per
    /// plugin configuration, not per `vm_id`).
    pub host: Scoped<ProxyHost>,
    pub admitter: Admitter,
    /// Slots handed to waiting streams of this VM, by stream id, until the stream takes its
    /// own (it has no callback of its own when it is resumed).
    pub handed: RefCell<HashMap<u32, Ticket>>,
    pub ticker: Ticker,
}

/// The root's one timer serves two clocks: the periodic work (heartbeat, sync) and the
/// waiters' deadlines, each answered on time even when nothing is released. When to fire is
/// the core's [`TickSchedule`]; this arms the host's timer accordingly.
pub struct Ticker {
    schedule: TickSchedule,
}

impl Ticker {
    fn new(period_ms: u64, now_ms: u64) -> Self {
        let ticker = Self {
            schedule: TickSchedule::new(period_ms, now_ms),
        };
        ticker.arm(ticker.schedule.next(None, now_ms), now_ms);
        ticker
    }

    /// A deadline at `deadline_ms` must be met: brings the timer forward if it fires later.
    pub fn expect(&self, deadline_ms: u64, now_ms: u64) {
        if let Some(period) = self.schedule.expect(deadline_ms, now_ms) {
            self.arm(period, now_ms);
        }
    }

    /// Arms the timer for the periodic work or `deadline_ms`, whichever comes first.
    fn rearm(&self, deadline_ms: Option<u64>, now_ms: u64) {
        self.arm(self.schedule.next(deadline_ms, now_ms), now_ms);
    }

    fn arm(&self, period_ms: u64, now_ms: u64) {
        // From a stream's context too, the host sets the timer of the stream's root.
        if hostcalls::set_tick_period(Duration::from_millis(period_ms)).is_ok() {
            self.schedule.armed(period_ms, now_ms);
        }
    }
}

/// One per VM (the main thread's and each worker's).
#[derive(Default)]
pub struct WipgateRoot {
    plugin: Option<Rc<Plugin>>,
    sync: Option<SyncDriver>,
}

impl Context for WipgateRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let status = status(MapType::HttpCallResponseHeaders);
        let body = buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
        let (Some(plugin), Some(sync)) = (&self.plugin, &mut self.sync) else {
            return;
        };
        sync.on_response(
            &plugin.host,
            &plugin.admitter,
            token,
            status,
            &body,
            now_ms(),
        );
    }
}

impl RootContext for WipgateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default();
        let config = match GateConfig::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("invalid plugin configuration: {e}");
                return false;
            }
        };
        let pending = config.not_yet_enforced();
        if !pending.is_empty() {
            log::warn!(
                "configuration keys accepted and validated but not yet enforced by this version: {}",
                pending.join(", ")
            );
        }
        // Shared data is per vm_id: this configuration's keys go under its own namespace
        // (its `scope`, else the root id and a fingerprint of the configuration).
        let root_id = property(&["plugin_root_id"])
            .map(|id| String::from_utf8_lossy(&id).into_owned())
            .unwrap_or_default();
        let host = Scoped::new(ProxyHost::new(), namespace(&root_id, &config, &bytes));
        // Each scope syncs on its own: its instance id says which (`NODE_ID/SCOPE`), so two
        // scoped configurations of one Envoy are two instances to the control service.
        let node_id = property(&["node", "id"]).map(|id| match &config.scope {
            Some(scope) => [id.as_slice(), b"/", scope.as_bytes()].concat(),
            None => id,
        });
        self.sync = config.control.clone().map(|control| {
            let instance = instance_id(&host, node_id.as_deref(), random_seed(now_ms()));
            let nonce = process_nonce(&host, random_seed(now_ms()));
            SyncDriver::new(control, instance).with_nonce(nonce)
        });
        let queued = config.queue.is_some();
        let admitter = Admitter::new(config, &host);
        if queued {
            // One queue per VM, under a name no other VM uses: the host calls back the VM
            // that registered a name last.
            let name = format!("wipgate.wake.{:016x}", random_seed(now_ms()));
            match hostcalls::register_shared_queue(&name) {
                Ok(queue) => admitter.set_wake_queue(queue),
                Err(status) => log::error!(
                    "cannot register the wake-up queue ({status:?}): requests are rejected at once instead of waiting"
                ),
            }
        }
        let tick_ms = self
            .sync
            .as_ref()
            .map_or(HEARTBEAT_MS, |s| s.tick_period_ms().min(HEARTBEAT_MS));
        self.plugin = Some(Rc::new(Plugin {
            host,
            admitter,
            handed: RefCell::default(),
            ticker: Ticker::new(tick_ms, now_ms()),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(plugin) = &self.plugin else { return };
        let now = now_ms();
        if plugin.ticker.schedule.periodic_due(now) {
            plugin.admitter.heartbeat(&plugin.host, now);
            if let Some(sync) = &mut self.sync {
                sync.on_tick(&plugin.host, &plugin.admitter, now);
            }
        }
        if plugin.admitter.waiting() > 0 {
            resolve(plugin, plugin.admitter.on_deadlines(&plugin.host, now_us()));
        }
        plugin
            .ticker
            .rearm(plugin.admitter.next_deadline_ms(), now_ms());
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // The messages only say "look": the slots handed over are in the ledger.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        let Some(plugin) = &self.plugin else { return };
        resolve(plugin, plugin.admitter.on_wake(&plugin.host, now_us()));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy never creates streams: on_configure said no.
        let plugin = self.plugin.clone()?;
        Some(Box::new(AdmissionContext::new(plugin, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A seed for the generated instance id: the host's randomness (WASI `random_get`), mixed
/// with the clock in case the host has none, so two Envoys never pick the same id.
fn random_seed(now_ms: u64) -> u64 {
    let mut bytes = [0u8; 8];
    let random = getrandom::getrandom(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes));
    random ^ now_ms.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
