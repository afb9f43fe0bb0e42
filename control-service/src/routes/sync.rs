//! `POST /v1/sync`: an Envoy's report in, its allowance out.

use axum::extract::State;
use axum::Json;
use wipgate_admission::wire::{SyncReply, SyncRequest};

use super::extract::JsonBytes;
use crate::error::{ApiError, ErrorBody};
use crate::fleet::instance_book::book_key;
use crate::last_replies::within_in_force;
use crate::state::AppState;
use crate::store::StoreError;

/// An Envoy reports its counts and receives its allowance, with the protected resource's
/// health by this replica's probes. While the store is unreachable
/// the last allowance this replica gave the instance is repeated with `degraded: true`
/// (and only for what is left of its validity); without one the answer is 503, and the
/// Envoy keeps its last good allowance.
#[utoipa::path(post, path = "/v1/sync", request_body = SyncRequest,
    responses((status = 200, body = SyncReply), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<SyncReply>, ApiError> {
    let report = SyncRequest::parse(&body)?;
    let instance = book_key(&report);
    let version = report.version.unwrap_or(1);
    let in_force = report.in_force.clone();
    let result = state.store.sync(report, state.params).await;
    let syncs = &state.metrics.syncs;
    match result {
        Ok(mut reply) => {
            reply.health = state.probes.health();
            if let Ok(mut last) = state.last_replies.lock() {
                last.insert(&instance, &reply, state.clock.now_ms());
            }
            syncs.with_label_values(&["ok"]).inc();
            Ok(Json(reply))
        }
        Err(StoreError::Refused(why)) => {
            tracing::debug!(%instance, %why, "sync refused");
            syncs.with_label_values(&["refused"]).inc();
            Err(ApiError::Refused(why))
        }
        Err(StoreError::Internal(detail)) => {
            tracing::error!(%detail, "sync failed");
            syncs.with_label_values(&["unavailable"]).inc();
            Err(ApiError::Internal)
        }
        Err(e) => {
            let cached = state
                .last_replies
                .lock()
                .ok()
                .and_then(|last| last.degraded(&instance, state.clock.now_ms()))
                .and_then(|reply| within_in_force(reply, version, in_force.as_ref()));
            match cached {
                Some(mut reply) => {
                    reply.health = state.probes.health();
                    tracing::debug!(error = %e, %instance, "store unavailable: repeating the last allowance");
                    syncs.with_label_values(&["degraded"]).inc();
                    Ok(Json(reply))
                }
                None => {
                    syncs.with_label_values(&["unavailable"]).inc();
                    Err(e.into())
                }
            }
        }
    }
}
