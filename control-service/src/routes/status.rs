//! `GET /v1/status`: the live fleet from the store, with this replica's probes.

use axum::extract::State;
use axum::Json;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::status::FleetStatus;
use crate::store::StoreError;

/// The fleet as the store sees it now, with this replica's probes (`/metrics` shows it too).
pub(super) async fn fleet_status(state: &AppState) -> Result<FleetStatus, StoreError> {
    let current = state.store.policy().await?;
    let (instances, now) = state.store.instances(state.params).await?;
    let mut status = FleetStatus::new(now, &current.policy, current.version, instances);
    status.health = state.probes.health();
    status.probes = state.probes.snapshot();
    Ok(status)
}

/// The live fleet: instances with their last report and allowance, totals, per-tenant sums.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = FleetStatus), (status = 503, body = ErrorBody)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<FleetStatus>, ApiError> {
    Ok(Json(fleet_status(&state).await?))
}
