//! Where the fleet's state lives: one trait, two stores. [`MemoryStore`] is the embedded
//! default (one instance); [`RedisStore`] lets any number of replicas share state.

mod memory;
mod open;
mod redis;

use std::future::Future;
use std::pin::Pin;

use wipgate_admission::wire::{SyncReply, SyncRequest};

use crate::fleet::{FleetPolicy, InstanceView, SplitParams};

pub use self::memory::MemoryStore;
pub use self::open::{open_store, open_store_with_clock};
pub use self::redis::RedisStore;

/// A boxed future, so that the trait can be used as `dyn FleetStore`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be reached now (connection refused, timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set lost against another writer.
    #[error("concurrent update")]
    Conflict,
    /// The store answered something unexpected.
    #[error("store error: {0}")]
    Internal(String),
    /// A sync refused by the fleet's caps; nothing was recorded.
    #[error("{0}")]
    Refused(#[from] crate::fleet::instance_book::Refusal),
}

/// The policy with its version. Versions only grow; version 0 is the built-in default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The policy.
    pub policy: FleetPolicy,
    /// Its version.
    pub version: u64,
}

/// The fleet's state: the policy and the live instances with their grants.
pub trait FleetStore: Send + Sync + 'static {
    /// A short name for logs and metrics: `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Ok when the store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The current policy.
    fn policy(&self) -> BoxFuture<'_, Result<Versioned, StoreError>>;

    /// Replaces the policy if its version is still `expected`; returns the new version, or
    /// [`StoreError::Conflict`]. The policy is already validated.
    fn replace_policy(
        &self,
        expected: u64,
        policy: FleetPolicy,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Records a validated report and returns the instance's allowance.
    fn sync(
        &self,
        report: SyncRequest,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<SyncReply, StoreError>>;

    /// The live instances (synced within `params.stale_after_ms`) and the store's clock.
    fn instances(
        &self,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<(Vec<InstanceView>, u64), StoreError>>;
}
