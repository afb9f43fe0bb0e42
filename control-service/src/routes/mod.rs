//! The API's routes, one file per group of handlers: [`health`] (liveness, readiness),
//! [`metrics`], [`openapi`], [`policy`] (the policy and its tenant entries), [`status`] and
//! [`sync`]. Admin routes take the [`extract::Admin`] extractor first and sit behind
//! [`middleware::require_admin`], so a call without the token is refused before its body
//! is read.

pub mod extract;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod policy;
pub mod status;
pub mod sync;

use axum::routing::{get, post, put};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

pub use self::policy::POLICY_VERSION_HEADER;
use crate::state::AppState;

/// Every route of the API. On admin routes the token is checked before anything else, the
/// body size limit included, so a call without the token always gets 401.
pub fn router(state: &AppState) -> Router<AppState> {
    let limit = RequestBodyLimitLayer::new(state.max_body_bytes);
    let public = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/v1/policy", get(policy::get_policy))
        .route("/v1/status", get(status::status))
        .route_layer(limit);
    // The sync token is checked before the body is read, as the admin token is.
    let sync = Router::new()
        .route("/v1/sync", post(sync::sync))
        .route_layer(limit)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_sync_token,
        ));
    let admin = Router::new()
        .route("/v1/policy", put(policy::put_policy))
        .route(
            "/v1/tenants/{name}",
            put(policy::put_tenant).delete(policy::delete_tenant),
        )
        .route_layer(limit)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_admin,
        ));
    public.merge(sync).merge(admin)
}
