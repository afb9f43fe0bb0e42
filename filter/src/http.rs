//! One HTTP stream: admitted or rejected when its request headers arrive; its slot released
//! exactly once when the stream ends, whichever way it ends.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wipgate_admission::{Admission, Permit, Rejection, TenantName};

use crate::host::now_ms;
use crate::metrics::StatsSlot;
use crate::plugin::Plugin;

/// Per-stream state. Invariant: `held` is `Some` exactly while this stream holds a slot.
pub struct AdmissionContext {
    plugin: Rc<Plugin>,
    held: Option<(Permit, StatsSlot)>,
}

impl AdmissionContext {
    pub fn new(plugin: Rc<Plugin>) -> Self {
        Self { plugin, held: None }
    }

    fn reject(&self, rejection: &Rejection) {
        let headers = rejection.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(
            rejection.status(),
            headers,
            Some(rejection.body().as_bytes()),
        );
    }

    /// The one release path. Every end of a stream (on_done, on_log, the context being
    /// dropped) calls it; `take()` makes the second and later calls no-ops.
    fn finish(&mut self) {
        if let Some((permit, slot)) = self.held.take() {
            self.plugin.release(permit, &slot, now_ms());
        }
    }
}

impl Context for AdmissionContext {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for AdmissionContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.held.is_some() {
            // Headers seen twice on one stream (e.g. an internal redirect): keep the slot.
            return Action::Continue;
        }
        let now = now_ms();
        let config = &self.plugin.static_config;
        let tenant = self.get_http_request_header_bytes(&config.tenant_header);
        let tenant = TenantName::from_header(tenant.as_deref(), &config.default_tenant);
        let priority = self.get_http_request_header_bytes(&config.priority_header);
        let limits = self.plugin.limits(now);
        let (placement, slot) = self.plugin.place(&limits, tenant, priority.as_deref());
        match self.plugin.admit(&limits, &placement, &slot, now) {
            Admission::Admitted(permit) => {
                self.held = Some((permit, slot));
                Action::Continue
            }
            Admission::Rejected(reason) => {
                self.reject(&Rejection {
                    reason,
                    tenant: placement.tenant,
                    retry_after_s: config.retry_after_s,
                });
                Action::Pause
            }
        }
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

impl Drop for AdmissionContext {
    fn drop(&mut self) {
        self.finish();
    }
}
