//! The one host facility the gate needs: a key-value store shared by all worker VMs with
//! compare-and-swap writes (proxy-wasm shared data). The filter implements it over the host;
//! tests implement it over a mutex.

use thiserror::Error;

/// Why a write did not happen.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CasError {
    /// Someone else wrote the key since it was read: read again and retry.
    #[error("compare-and-swap mismatch")]
    Mismatch,
    /// The host refused the call for another reason.
    #[error("shared data error: {0}")]
    Host(String),
}

/// A shared key-value store with versioned (`cas`) writes.
pub trait SharedData {
    /// The value of `key` and its version; `(None, None)` when the key was never written.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), CasError>;

    /// Writes `value` if the key's version is still `cas` (`None`: write unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError>;
}
