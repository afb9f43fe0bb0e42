//! The root context: validates the plugin configuration once, ticks the heartbeat, and
//! hands the sync's ticks and callout responses to the core.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use wipgate_admission::sync::instance_id;
use wipgate_admission::{Admitter, GateConfig, SyncDriver};

use crate::host::{now_ms, ProxyHost};
use crate::http::AdmissionContext;

/// How often each VM sends a heartbeat to the shared ledger (at least), in ms.
const HEARTBEAT_MS: u64 = 1_000;

/// What the root context and every stream of one VM share.
pub struct Plugin {
    pub host: ProxyHost,
    pub admitter: Admitter,
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
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
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
        let bytes = self.get_plugin_configuration().unwrap_or_default();
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
        let host = ProxyHost::new();
        let node_id = self.get_property(vec!["node", "id"]);
        self.sync = config.control.clone().map(|control| {
            let instance = instance_id(&host, node_id.as_deref(), random_seed(now_ms()));
            SyncDriver::new(control, instance)
        });
        let admitter = Admitter::new(config, &host);
        self.plugin = Some(Rc::new(Plugin { host, admitter }));
        let tick_ms = self
            .sync
            .as_ref()
            .map_or(HEARTBEAT_MS, |s| s.tick_period_ms().min(HEARTBEAT_MS));
        self.set_tick_period(Duration::from_millis(tick_ms));
        true
    }

    fn on_tick(&mut self) {
        let Some(plugin) = &self.plugin else { return };
        let now = now_ms();
        plugin.admitter.heartbeat(&plugin.host, now);
        if let Some(sync) = &mut self.sync {
            sync.on_tick(&plugin.host, &plugin.admitter, now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy never creates streams: on_configure said no.
        let plugin = self.plugin.clone()?;
        Some(Box::new(AdmissionContext::new(plugin)))
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
