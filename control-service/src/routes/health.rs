//! `GET /healthz` (the process serves) and `GET /readyz` (the store answers, not draining).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::state::AppState;

/// `{"status": ...}` of the health endpoints.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not ready`.
    pub status: String,
    /// The store kind: `memory` or `redis` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        store: None,
        reason: None,
    })
}

/// Readiness: the store answers and the service is not draining.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let store = Some(state.store.kind().to_owned());
    let reason = if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        Some("draining".to_owned())
    } else {
        let ping = state.store.ping().await;
        state.metrics.set_store_up(ping.is_ok());
        ping.err().map(|e| e.to_string())
    };
    match reason {
        None => (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
                store,
                reason,
            }),
        ),
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not ready".into(),
                store,
                reason,
            }),
        ),
    }
}
