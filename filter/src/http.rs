//! One HTTP stream: admitted or rejected when its request headers arrive; its slot released
//! exactly once when the stream ends, whichever way it ends.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wipgate_admission::{Decision, Rejection, Ticket};

use crate::host::now_us;
use crate::root::Plugin;

/// Per-stream state. Invariant: `ticket` is `Some` exactly while this stream holds a slot.
pub struct AdmissionContext {
    plugin: Rc<Plugin>,
    ticket: Option<Ticket>,
    /// The response status, once response headers passed (read only for adaptive limits).
    status: Option<u16>,
}

impl AdmissionContext {
    pub fn new(plugin: Rc<Plugin>) -> Self {
        Self {
            plugin,
            ticket: None,
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
        if let Some(ticket) = self.ticket.take() {
            let plugin = &self.plugin;
            plugin
                .admitter
                .release(&plugin.host, ticket, self.status, now_us());
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
        if self.ticket.is_some() {
            // Headers seen twice on one stream (e.g. an internal redirect): keep the slot.
            return Action::Continue;
        }
        let config = self.plugin.admitter.config();
        let tenant = self.get_http_request_header_bytes(&config.tenant_header);
        let priority = self.get_http_request_header_bytes(&config.priority_header);
        let decision = self.plugin.admitter.admit(
            &self.plugin.host,
            tenant.as_deref(),
            priority.as_deref(),
            now_us(),
        );
        match decision {
            Decision::Admitted(ticket) => {
                self.ticket = Some(ticket);
                Action::Continue
            }
            Decision::Rejected(rejection) => {
                self.reject(&rejection);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.ticket.is_some() && self.plugin.admitter.wants_status() {
            self.status = self
                .get_http_response_header(":status")
                .and_then(|s| s.parse().ok());
        }
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
