//! `GET /metrics`: the Prometheus text format, with fleet and probe gauges refreshed first.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::status::fleet_status;
use crate::error::ApiError;
use crate::state::AppState;

/// Prometheus text format; fleet gauges are refreshed from the store first.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    match fleet_status(&state).await {
        Ok(status) => {
            state.metrics.set_store_up(true);
            state.metrics.set_fleet(&status);
        }
        Err(_) => state.metrics.set_store_up(false),
    }
    state.probes.publish_metrics();
    let body = state.metrics.render().map_err(|e| {
        tracing::error!(error = %e, "rendering metrics");
        ApiError::Internal
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
