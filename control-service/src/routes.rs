//! The handlers. Admin routes take an [`Admin`] extractor first, so a call without the
//! token is refused before its body is read.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::limit::RequestBodyLimitLayer;
use wipgate_admission::config::parse_json;
use wipgate_admission::wire::{SyncReply, SyncRequest};
use wipgate_admission::Bulkhead;

use crate::error::{ApiError, ErrorBody};
use crate::fleet::FleetPolicy;
use crate::status::FleetStatus;
use crate::store::StoreError;
use crate::AppState;

/// Header carrying the policy version on policy replies.
pub const POLICY_VERSION_HEADER: &str = "x-wipgate-policy-version";
/// A policy write retries this often when another writer wins the compare-and-set.
const WRITE_ATTEMPTS: usize = 8;

/// Every route of the API. On admin routes the token is checked before anything else, the
/// body size limit included, so a call without the token always gets 401.
pub fn router(state: &AppState) -> Router<AppState> {
    let limit = RequestBodyLimitLayer::new(state.max_body_bytes);
    let public = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/policy", get(get_policy))
        .route("/v1/status", get(status))
        .route("/v1/sync", post(sync))
        .route_layer(limit);
    let admin = Router::new()
        .route("/v1/policy", put(put_policy))
        .route("/v1/tenants/{name}", put(put_tenant).delete(delete_tenant))
        .route_layer(limit)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ));
    public.merge(admin)
}

/// Refuses admin calls without the right token before their body is looked at.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.token.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Counts and times every request by its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[&method, &route, &status])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.token.check(&parts.headers).map(|()| Admin)
    }
}

/// A request body within the size limit that is at least well-formed JSON.
pub struct JsonBytes(Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;
    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(state.max_body_bytes)
            } else {
                ApiError::Malformed {
                    problem: e.body_text(),
                }
            }
        })?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            ApiError::Malformed {
                problem: format!("request body is not JSON: {e}"),
            }
        })?;
        Ok(Self(bytes))
    }
}

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

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

fn with_version(version: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(POLICY_VERSION_HEADER, v);
    }
    response
}

/// The fleet policy; its version is in the `x-wipgate-policy-version` header.
#[utoipa::path(get, path = "/v1/policy", responses((status = 200, body = FleetPolicy), (status = 503, body = ErrorBody)))]
pub async fn get_policy(State(state): State<AppState>) -> Result<Response, ApiError> {
    let current = state.store.policy().await?;
    Ok(with_version(current.version, Json(current.policy)))
}

/// Applies `edit` to the current policy and stores the result, retrying when another
/// writer got there first. `edit` validates; its error is the caller's.
async fn edit_policy(
    state: &AppState,
    edit: impl Fn(&FleetPolicy) -> Result<FleetPolicy, ApiError>,
) -> Result<(u64, FleetPolicy), ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let current = state.store.policy().await?;
        let next = edit(&current.policy)?;
        match state
            .store
            .replace_policy(current.version, next.clone())
            .await
        {
            Ok(version) => {
                tracing::info!(version, "policy changed");
                state.probes.apply(version, &next.probes);
                return Ok((version, next));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict)
}

/// Replaces the whole policy (admin). The body is validated as a whole.
#[utoipa::path(put, path = "/v1/policy", request_body = FleetPolicy, security(("bearer" = [])),
    responses((status = 200, body = FleetPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_policy(
    State(state): State<AppState>,
    _: Admin,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let policy = FleetPolicy::parse(&body)?;
    let (version, policy) = edit_policy(&state, |_| Ok(policy.clone())).await?;
    Ok(with_version(version, Json(policy)))
}

/// Sets one tenant's fleet-wide `reserved` and `max` (admin); `*` is the entry for tenants
/// not listed by name.
#[utoipa::path(put, path = "/v1/tenants/{name}", request_body = Bulkhead, security(("bearer" = [])),
    params(("name" = String, Path, description = "Tenant name: 1-64 bytes of [A-Za-z0-9._-], or `*`")),
    responses((status = 200, body = FleetPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_tenant(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let bulkhead: Bulkhead = parse_json(&body)?;
    let (version, policy) = edit_policy(&state, |p| Ok(p.with_tenant(&name, bulkhead)?)).await?;
    Ok(with_version(version, Json(policy)))
}

/// Removes one tenant's entry (admin); 404 when there is none.
#[utoipa::path(delete, path = "/v1/tenants/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "Tenant name")),
    responses((status = 200, body = FleetPolicy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (version, policy) = edit_policy(&state, |p| {
        p.without_tenant(&name)
            .ok_or_else(|| ApiError::NotFound(format!("no tenant entry `{name}`")))
    })
    .await?;
    Ok(with_version(version, Json(policy)))
}

async fn fleet_status(state: &AppState) -> Result<FleetStatus, StoreError> {
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

/// An Envoy reports its counts and receives its allowance, with the protected resource's
/// health by this replica's probes. While the store is unreachable
/// the last allowance this replica gave the instance is repeated with `degraded: true`
/// (and only for what is left of its validity); without one the answer is 503, and the
/// Envoy keeps its last good allowance.
#[utoipa::path(post, path = "/v1/sync", request_body = SyncRequest,
    responses((status = 200, body = SyncReply), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<SyncReply>, ApiError> {
    let report = SyncRequest::parse(&body)?;
    let instance = report.instance.clone();
    let result = state.store.sync(report, state.params).await;
    let syncs = &state.metrics.syncs;
    match result {
        Ok(mut reply) => {
            reply.health = state.probes.health();
            if let Ok(mut last) = state.last_replies.lock() {
                last.insert(&reply);
            }
            syncs.with_label_values(&["ok"]).inc();
            Ok(Json(reply))
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
                .and_then(|last| last.degraded(&instance));
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
