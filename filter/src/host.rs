//! The one adapter between the admission core and the proxy-wasm host: shared data with
//! compare-and-swap, and the wall clock.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use wipgate_admission::{CasError, SharedData};

/// Envoy's shared data: one store per `vm_id`, shared by every worker thread's VM.
pub struct HostSharedData;

impl SharedData for HostSharedData {
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

/// Milliseconds since the epoch by the host's clock; 0 if the host clock is unreadable.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Microseconds since the epoch by the host's clock; 0 if unreadable. For latencies.
pub fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
