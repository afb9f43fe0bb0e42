//! Extractors: proof of the admin token, and a JSON body within the size limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;

use crate::error::ApiError;
use crate::state::AppState;

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.token.check(&parts.headers).map(|()| Admin)
    }
}

/// A request body within the size limit that is at least well-formed JSON.
pub struct JsonBytes(pub Bytes);

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
