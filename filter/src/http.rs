//! One HTTP stream: admitted, rejected or paused to wait when its request headers arrive; its
//! slot released exactly once when the stream ends, whichever way it ends.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use wipgate_admission::{Decision, Rejection, Resolved, Ticket};

use crate::host::{header, now_ms, now_us, status};
use crate::root::Plugin;

/// Per-stream state. Invariant: this stream holds a slot exactly while `ticket` is `Some` or
/// the plugin's `handed` map holds one under its id (a slot handed over while it waited).
pub struct AdmissionContext {
    plugin: Rc<Plugin>,
    /// The stream's context id: its token while it waits.
    id: u32,
    ticket: Option<Ticket>,
    /// It was paused to wait for a slot and has not been answered or resumed yet.
    waiting: bool,
    /// The response status, once response headers passed (read only for adaptive limits).
    status: Option<u16>,
}

/// Answers the current stream with a rejection (the contract's status, headers and body).
fn send_rejection(rejection: &Rejection) {
    let headers = rejection.headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = rejection.body();
    if let Err(status) =
        hostcalls::send_http_response(rejection.status(), headers, Some(body.as_bytes()))
    {
        log::warn!("cannot send the rejection: {status:?}");
    }
}

/// Acts on ended waits: a stream handed a slot resumes, one whose deadline came is answered.
/// Runs on the root context (wake-up or timer), so each stream is made the effective one.
pub fn resolve(plugin: &Plugin, resolved: Vec<Resolved>) {
    for r in resolved {
        match r {
            Resolved::Resume(id, ticket) => {
                if hostcalls::set_effective_context(id).is_ok() {
                    plugin.handed.borrow_mut().insert(id, ticket);
                    if let Err(status) = hostcalls::resume_http_request() {
                        log::warn!("cannot resume a stream handed a slot: {status:?}");
                    }
                } else {
                    // The stream is gone: the slot goes back at once.
                    plugin
                        .admitter
                        .release(&plugin.host, ticket, None, now_us());
                }
            }
            Resolved::Reject(id, rejection) => {
                if hostcalls::set_effective_context(id).is_ok() {
                    send_rejection(&rejection);
                }
            }
        }
    }
}

impl AdmissionContext {
    pub fn new(plugin: Rc<Plugin>, id: u32) -> Self {
        Self {
            plugin,
            id,
            ticket: None,
            waiting: false,
            status: None,
        }
    }

    /// Takes over a slot handed to this stream while it waited; true while it still waits.
    fn still_waiting(&mut self) -> bool {
        if self.waiting {
            if let Some(ticket) = self.plugin.handed.borrow_mut().remove(&self.id) {
                self.ticket = Some(ticket);
                self.waiting = false;
            }
        }
        self.waiting
    }

    /// The one release path. The end of the upstream's response (its last byte or its
    /// trailers) and every end of a stream (on_done, on_log, the context being dropped) call
    /// it; `take()` makes the second and later calls no-ops. A stream that
    /// still waits leaves the queue (and gives back a slot handed to it meanwhile).
    fn finish(&mut self) {
        let now = now_us();
        if self.still_waiting() {
            self.waiting = false;
            self.plugin.admitter.leave(&self.plugin.host, self.id, now);
        }
        if let Some(ticket) = self.ticket.take() {
            let plugin = &self.plugin;
            plugin
                .admitter
                .release(&plugin.host, ticket, self.status, now);
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
        if self.ticket.is_some() || self.waiting {
            // Headers seen twice on one stream (e.g. an internal redirect): keep the slot.
            return Action::Continue;
        }
        #[cfg(feature = "test-trap")]
        if header(MapType::HttpRequestHeaders, "x-wipgate-test-trap").is_some() {
            // A trap as a bug would cause one (`unreachable` in the module): test builds only.
            std::process::abort();
        }
        let plugin = &self.plugin;
        let config = plugin.admitter.config();
        let tenant = header(MapType::HttpRequestHeaders, &config.tenant_header);
        let priority = header(MapType::HttpRequestHeaders, &config.priority_header);
        let decision = plugin.admitter.admit_or_wait(
            &plugin.host,
            tenant.as_deref(),
            priority.as_deref(),
            self.id,
            now_us(),
        );
        match decision {
            Decision::Admitted(ticket) => {
                self.ticket = Some(ticket);
                Action::Continue
            }
            Decision::Rejected(rejection) => {
                send_rejection(&rejection);
                Action::Pause
            }
            Decision::Waiting => {
                self.waiting = true;
                if let Some(deadline) = plugin.admitter.next_deadline_ms() {
                    plugin.ticker.expect(deadline, now_ms());
                }
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // A waiting request's body is buffered, not passed on, until it has a slot.
        if self.still_waiting() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.still_waiting() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.still_waiting();
        if self.ticket.is_some() && self.plugin.admitter.wants_status() {
            self.status = status(MapType::HttpResponseHeaders);
        }
        if end_of_stream {
            self.finish();
        }
        Action::Continue
    }

    // A slot is work at the constraint, not a client's download: it is released when the
    // upstream's response has passed whole (its last byte or its trailers), even if the
    // client is still reading it; the end of the stream stays the backstop.
    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.finish();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.finish();
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
