//! One HTTP stream: admitted or rejected when its request headers arrive; its slot released
//! exactly once when the stream ends, whichever way it ends.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wipgate_admission::adaptive::Outcome;
use wipgate_admission::gate::Finish;
use wipgate_admission::{Admission, Permit, Rejection, TenantName};

use crate::host::{now_ms, now_us};
use crate::metrics::StatsSlot;
use crate::plugin::Plugin;

/// Per-stream state. Invariant: `held` is `Some` exactly while this stream holds a slot.
pub struct AdmissionContext {
    plugin: Rc<Plugin>,
    held: Option<(Permit, StatsSlot)>,
    /// When the request was admitted (µs), for its latency.
    admitted_us: u64,
    /// The response status, once response headers passed.
    status: Option<u16>,
}

impl AdmissionContext {
    pub fn new(plugin: Rc<Plugin>) -> Self {
        Self {
            plugin,
            held: None,
            admitted_us: 0,
            status: None,
        }
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
            // A 5xx (Envoy's own for upstream resets and timeouts included) counts against
            // the resource; a stream with no response (the client left) says nothing.
            // Without `adaptive`, `status` stays None and no sample is taken.
            let finish = self.status.map(|status| Finish {
                latency_us: now_us().saturating_sub(self.admitted_us),
                outcome: if status >= 500 {
                    Outcome::Error
                } else {
                    Outcome::Success
                },
            });
            self.plugin.release(permit, &slot, finish, now_ms());
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
                self.admitted_us = now_us();
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only the adaptive limit needs the outcome: spare the host call otherwise.
        if self.held.is_none() || self.plugin.static_config.adaptive.is_none() {
            return Action::Continue;
        }
        self.status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse().ok());
        Action::Continue
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
