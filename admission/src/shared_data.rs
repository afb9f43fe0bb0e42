//! A key-value store shared by all worker VMs with compare-and-swap writes (proxy-wasm shared
//! data): the facility the gate is built on. The filter implements it over the host;
//! [`MemoryStore`] implements Envoy's semantics in memory for native tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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

/// Values with their versions, and the last version given out.
type Versioned = (HashMap<String, (Vec<u8>, u32)>, u32);

/// Envoy's shared-data semantics in memory: every write gets a new version, a write with a
/// stale version is refused, a write without a version always goes through. Thread-safe, so
/// tests can run real threads against it; can fail every n-th write on purpose.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Versioned>,
    fail_every: Option<u64>,
    writes: AtomicU64,
}

impl MemoryStore {
    /// A store that fails every `n`-th write (the first included) with a host error.
    pub fn failing_every(n: u64) -> Self {
        Self {
            fail_every: Some(n.max(1)),
            ..Self::default()
        }
    }

    /// A store holding a copy of this one's data, without failures.
    pub fn snapshot(&self) -> Self {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Self {
            data: Mutex::new(data.clone()),
            ..Self::default()
        }
    }
}

impl SharedData for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), CasError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(match data.0.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if self.fail_every.is_some_and(|every| n % every == 0) {
            return Err(CasError::Host("injected".into()));
        }
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, next) = &mut *data;
        if let (Some((_, current)), Some(expected)) = (map.get(key), cas) {
            if *current != expected {
                return Err(CasError::Mismatch);
            }
        }
        *next += 1;
        map.insert(key.to_owned(), (value.to_vec(), *next));
        Ok(())
    }
}

impl<T: SharedData + ?Sized> SharedData for &T {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), CasError> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        (**self).set(key, value, cas)
    }
}
