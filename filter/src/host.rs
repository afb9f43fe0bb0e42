//! The one adapter between the admission core and the proxy-wasm host: shared data with
//! compare-and-swap, callouts, stats, and the clock the entry points read.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
use wipgate_admission::labels::{Label, Usage};
use wipgate_admission::{Callout, CasError, Event, Host, SharedData};

use crate::metrics::Metrics;

/// The host as the core sees it. Envoy's shared data is one store per `vm_id`, shared by every
/// worker thread's VM; stats with one name are one stat for all of them.
pub struct ProxyHost {
    metrics: Metrics,
}

impl ProxyHost {
    /// Defines the Envoy-wide stats.
    pub fn new() -> Self {
        Self {
            metrics: Metrics::define(),
        }
    }
}

impl SharedData for ProxyHost {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), CasError> {
        hostcalls::get_shared_data(key).map_err(|s| CasError::Host(format!("{s:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(CasError::Mismatch),
            Err(s) => Err(CasError::Host(format!("{s:?}"))),
        }
    }
}

impl Host for ProxyHost {
    fn dispatch(&self, call: &Callout<'_>) -> Result<u32, String> {
        let bearer = call.bearer.map(|token| format!("Bearer {token}"));
        let mut headers = vec![
            (":method", "POST"),
            (":path", call.path),
            (":authority", call.authority),
            ("content-type", "application/json"),
        ];
        if let Some(value) = &bearer {
            headers.push(("authorization", value));
        }
        hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            Some(call.body),
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|s| format!("{s:?}"))
    }

    fn record(&self, event: Event<'_>) {
        self.metrics.record(event);
    }

    fn usage(&self) -> Vec<(Label, Usage)> {
        self.metrics.usage()
    }

    fn wake(&self, queue: u32) {
        if let Err(status) = hostcalls::enqueue_shared_queue(queue, Some(b"w")) {
            // The waiting VM's timer picks the slot up instead; a gone VM's slot is reclaimed.
            log::debug!("cannot wake queue {queue}: {status:?}");
        }
    }
}

// The SDK's `Context` helpers (`get_property`, `get_http_request_header_bytes`, ...) unwrap the
// host's status, and its `String` header getters unwrap UTF-8: a status or a header value
// they do not expect would trap the VM. These read through the calls that return a status.

/// A header (or trailer) value as bytes; `None` when absent or unreadable.
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

/// A response status header (`:status`) as a number; `None` when absent or not a number.
pub fn status(map: MapType) -> Option<u16> {
    std::str::from_utf8(&header(map, ":status")?)
        .ok()?
        .parse()
        .ok()
}

/// The first `max` bytes of a host buffer; `None` when absent or unreadable.
pub fn buffer(kind: BufferType, max: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(kind, 0, max).ok().flatten()
}

/// A host property; `None` when absent or unreadable.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Microseconds since the epoch by the host's clock; 0 if it is unreadable.
pub fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch by the host's clock; 0 if it is unreadable.
pub fn now_ms() -> u64 {
    now_us() / 1_000
}
