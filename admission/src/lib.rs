//! wipgate's admission core: everything the filter decides, with no proxy-wasm host calls.
//!
//! The filter (`wipgate-filter`) only translates host events into calls on this crate, so the
//! logic here runs natively under unit and property tests. Time is always an argument
//! (`now_ms`, `now_us`), never read from a clock, and the host is reached through the narrow
//! [`Host`] trait (shared data, callouts, stats), which the filter implements in one adapter
//! file and [`fake_host::FakeHost`] implements in memory for tests.
//!
//! The two entry points: [`Admitter`] (one VM's admissions and releases against the
//! Envoy-wide [`ledger`]) and [`SyncDriver`] (the periodic sync with the control service).
#![warn(missing_docs)]

pub mod adaptive;
pub mod admitter;
pub mod bulkhead;
pub mod clock;
pub mod config;
pub mod fake_host;
pub mod gate;
pub mod host;
pub mod labels;
pub mod ledger;
pub mod limits;
pub mod log_limit;
pub mod partitions;
pub mod queue;
pub mod rejection;
pub mod retry_after;
#[cfg(feature = "schema")]
pub mod schema;
pub mod scope;
pub mod shared_data;
pub mod sync;
pub mod tenant;
pub mod tick;
pub mod wire;

pub use admitter::{Admitter, Decision, Resolved, Ticket};
pub use bulkhead::Bulkhead;
pub use config::{ConfigError, GateConfig};
pub use gate::{Admission, Gate, GateError, Permit, WorkerHandle};
pub use host::{Callout, Event, Host, WaitEnd};
pub use partitions::{Partitions, Placement};
pub use rejection::{RejectReason, Rejection};
pub use shared_data::{CasError, SharedData};
pub use sync::SyncDriver;
pub use tenant::TenantName;
