//! Middleware of the API: admin auth in front of the admin routes, the sync token in front
//! of `/v1/sync`, and per-route request counts and latencies for every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Refuses admin calls without the right token before their body is looked at.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let checked = state.token.check(request.headers());
    run_if(checked, request, next).await
}

/// Refuses syncs without the sync token (when one is configured) before their body is read.
pub async fn require_sync_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let checked = state.sync_token.check(request.headers());
    run_if(checked, request, next).await
}

/// The rest of the stack when `checked` passed, else its error.
async fn run_if(checked: Result<(), ApiError>, request: Request, next: Next) -> Response {
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Counts and times every request by its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[method, &route, &status])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The method as a metric label: the standard methods by name, anything else `other`, so a
/// client inventing methods cannot create series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;
    use axum::http::Method;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"FOO123").unwrap_or(Method::TRACE)),
            "other"
        );
        assert_eq!(method_label(&Method::TRACE), "other");
    }
}
