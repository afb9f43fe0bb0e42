//! The root context: validates the plugin configuration once, and ticks the heartbeat.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use wipgate_admission::GateConfig;

use crate::host::now_ms;
use crate::http::AdmissionContext;
use crate::plugin::Plugin;

/// How often each VM sends a heartbeat to the shared ledger.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// One per VM (the main thread's and each worker's).
#[derive(Default)]
pub struct WipgateRoot {
    plugin: Option<Rc<Plugin>>,
}

impl Context for WipgateRoot {}

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
        self.plugin = Some(Rc::new(Plugin::new(config)));
        self.set_tick_period(HEARTBEAT);
        true
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.heartbeat(now_ms());
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
