//! wipgate's control service: the fleet policy, fleet accounting and each Envoy's allowance.
//!
//! [`app`] builds the router from an [`AppState`]; `main` only reads [`Settings`], picks the
//! store and serves. Tests drive the same router in-process and over a real socket.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod error;
pub mod field_error;
pub mod fleet;
pub mod http_client;
pub mod last_replies;
pub mod metrics;
pub mod probe_loop;
pub mod probes;
pub mod routes;
pub mod settings;
pub mod state;
pub mod status;
pub mod store;

pub use crate::app::app;
pub use crate::auth::{AdminToken, SyncToken};
pub use crate::clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use crate::error::ApiError;
pub use crate::metrics::Metrics;
pub use crate::probes::{ProbeHub, ProbeMetrics};
pub use crate::settings::Settings;
pub use crate::state::{AppState, Inner};
pub use crate::store::{open_store, open_store_with_clock, FleetStore, MemoryStore, RedisStore};
