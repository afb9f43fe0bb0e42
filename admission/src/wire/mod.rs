//! The JSON of `POST /v1/sync`, the one thing the filter and the control service both speak:
//! what an Envoy reports ([`SyncRequest`]), the allowance it gets back ([`SyncReply`]) and
//! the protected resource's health that every reply carries ([`ResourceHealth`]).
//!
//! Only the wire format lives here; how the control service computes an allowance is its
//! own business (`control-service/src/fleet/`). With the `openapi` feature the types also
//! describe themselves for the control service's `/openapi.json`; the filter builds without.

pub mod health;
#[cfg(feature = "openapi")]
mod openapi;
pub mod sync;

pub use health::ResourceHealth;
pub use sync::{
    InForce, SyncReply, SyncRequest, UsageReport, MAX_ENTRIES, MAX_INSTANCE_LEN, MAX_NONCE_LEN,
    PROTOCOL_VERSION,
};
