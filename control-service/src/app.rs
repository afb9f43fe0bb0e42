//! The whole API as one router with its layers, apart from `main` so that tests drive it
//! directly (`tower::ServiceExt::oneshot`) and over a real socket.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// The whole API. Layers: request tracing, a time limit per request (503 past it), 413s
/// given a JSON body, per-route metrics; body size limits and admin auth sit on the routes.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let timeout = state.request_timeout;
    routes::router(&state)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::middleware::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(
            move |r: Response| async move { json_413(r, limit) },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// tower-http answers an over-long body with a plain-text 413; give it the API's JSON error.
fn json_413(response: Response, limit: usize) -> Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        ApiError::TooLarge(limit).into_response()
    } else {
        response
    }
}
