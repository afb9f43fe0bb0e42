//! wipgate's admission core: everything the filter decides, with no proxy-wasm host calls.
//!
//! The filter (`wipgate-filter`) only translates host events into calls on this crate, so the
//! logic here runs natively under unit and property tests. Time is always an argument
//! (`now_ms`), never read from a clock, and shared memory is reached through the narrow
//! [`SharedData`] trait, which the filter implements over proxy-wasm shared data.
#![warn(missing_docs)]

pub mod adaptive;
pub mod bulkhead;
pub mod config;
pub mod control_sync;
pub mod gate;
pub mod ledger;
pub mod partitions;
pub mod rejection;
pub mod shared_data;
pub mod tenant;
pub mod wire;

pub use bulkhead::Bulkhead;
pub use config::{ConfigError, GateConfig};
pub use gate::{Admission, Gate, GateError, Permit, WorkerHandle};
pub use partitions::{Partitions, Placement};
pub use rejection::{RejectReason, Rejection};
pub use shared_data::{CasError, SharedData};
pub use tenant::TenantName;
