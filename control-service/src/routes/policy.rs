//! `GET`/`PUT /v1/policy` and `PUT`/`DELETE /v1/tenants/{name}`: the fleet policy and its
//! tenant entries. Every write is a compare-and-set on the policy version, retried when
//! another writer got there first; replies carry the version in a header.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use wipgate_admission::config::parse_json;
use wipgate_admission::Bulkhead;

use super::extract::{Admin, JsonBytes};
use crate::error::{ApiError, ErrorBody};
use crate::fleet::FleetPolicy;
use crate::state::AppState;
use crate::store::StoreError;

/// Header carrying the policy version on policy replies.
pub const POLICY_VERSION_HEADER: &str = "x-wipgate-policy-version";
/// A policy write retries this often when another writer wins the compare-and-set.
const WRITE_ATTEMPTS: usize = 8;

/// `body` with the policy version in the [`POLICY_VERSION_HEADER`] header, and as its
/// entity tag (`etag: "VERSION"`) for `If-Match`.
fn with_version(version: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(POLICY_VERSION_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The version a write's `If-Match` requires: `None` without the header (or with `*`);
/// the header holds the version as `GET /v1/policy` gives it (`x-wipgate-policy-version`),
/// or its entity tag (`"42"`, `W/"42"`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text);
    let bare = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    bare.parse().map(Some).map_err(|_| {
        ApiError::Invalid(wipgate_admission::ConfigError {
            field: "if-match".to_owned(),
            problem: "must be a policy version (x-wipgate-policy-version or the etag)".to_owned(),
        })
    })
}

/// The fleet policy; its version is in the `x-wipgate-policy-version` header.
#[utoipa::path(get, path = "/v1/policy", responses((status = 200, body = FleetPolicy), (status = 503, body = ErrorBody)))]
pub async fn get_policy(State(state): State<AppState>) -> Result<Response, ApiError> {
    let current = state.store.policy().await?;
    Ok(with_version(current.version, Json(current.policy)))
}

/// Applies `edit` to the current policy and stores the result, retrying when another
/// writer got there first. With `expected` (the request's `If-Match`) there is no retry:
/// a policy at another version, now or by the time of the write, is 412 and nothing
/// changes. `edit` validates; its error is the caller's.
async fn edit_policy(
    state: &AppState,
    expected: Option<u64>,
    edit: impl Fn(&FleetPolicy) -> Result<FleetPolicy, ApiError>,
) -> Result<(u64, FleetPolicy), ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let current = state.store.policy().await?;
        if expected.is_some_and(|v| v != current.version) {
            return Err(ApiError::PreconditionFailed(current.version));
        }
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
            Err(StoreError::Conflict) if expected.is_some() => {
                let now = state.store.policy().await?.version;
                return Err(ApiError::PreconditionFailed(now));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict)
}

/// Replaces the whole policy (admin). The body is validated as a whole. With `If-Match`
/// (the version from `GET /v1/policy`), only while the policy is still at that version
/// (412 otherwise), so that a read-edit-write never overwrites a change made in between.
#[utoipa::path(put, path = "/v1/policy", request_body = FleetPolicy, security(("bearer" = [])),
    params(("if-match" = Option<String>, Header, description = "The policy version the write applies to")),
    responses((status = 200, body = FleetPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn put_policy(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let policy = FleetPolicy::parse(&body)?;
    let (version, policy) = edit_policy(&state, expected, |_| Ok(policy.clone())).await?;
    Ok(with_version(version, Json(policy)))
}

/// Sets one tenant's fleet-wide `reserved` and `max` (admin); `*` is the entry for tenants
/// not listed by name.
#[utoipa::path(put, path = "/v1/tenants/{name}", request_body = Bulkhead, security(("bearer" = [])),
    params(("name" = String, Path, description = "Tenant name: 1-64 bytes of [A-Za-z0-9._-], or `*`")),
    responses((status = 200, body = FleetPolicy), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_tenant(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let bulkhead: Bulkhead = parse_json(&body)?;
    let (version, policy) =
        edit_policy(&state, expected, |p| Ok(p.with_tenant(&name, bulkhead)?)).await?;
    Ok(with_version(version, Json(policy)))
}

/// Removes one tenant's entry (admin); 404 when there is none.
#[utoipa::path(delete, path = "/v1/tenants/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "Tenant name")),
    responses((status = 200, body = FleetPolicy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let (version, policy) = edit_policy(&state, expected, |p| {
        p.without_tenant(&name)
            .ok_or_else(|| ApiError::NotFound(format!("no tenant entry `{name}`")))
    })
    .await?;
    Ok(with_version(version, Json(policy)))
}
