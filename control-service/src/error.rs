//! The one error type of the API: every failure becomes `{"error": ..., "field": ...}` with
//! a status, and internals stay in the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wipgate_admission::ConfigError;

use crate::fleet::instance_book::Refusal;
use crate::store::StoreError;

/// The body of every error reply.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
    /// The field at fault, when there is one (dotted path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("{problem}")]
    Malformed {
        /// What is wrong.
        problem: String,
    },
    /// The body is JSON but not a valid value: names the field.
    #[error("{0}")]
    Invalid(ConfigError),
    /// No or wrong bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// No such entry.
    #[error("{0}")]
    NotFound(String),
    /// The body is larger than `--max-body-bytes`.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// Concurrent writers kept changing the policy.
    #[error("the policy changed concurrently; retry")]
    Conflict,
    /// The store cannot be reached.
    #[error("the store is unavailable; retry later")]
    Unavailable,
    /// `If-Match` names another version than the policy's (the current one).
    #[error("the policy is at version {0}, not the one in if-match")]
    PreconditionFailed(u64),
    /// A sync refused by the fleet's caps (live instances, joins per second).
    #[error("{0}")]
    Refused(Refusal),
    /// Anything else; the details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        Self::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Self::Unavailable
            }
            StoreError::Conflict => Self::Conflict,
            StoreError::Refused(why) => Self::Refused(why),
            StoreError::Internal(detail) => {
                tracing::error!(%detail, "store error");
                Self::Internal
            }
        }
    }
}

impl ApiError {
    /// The status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Refused(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        match self {
            Self::Invalid(e) => ErrorBody {
                error: e.problem.clone(),
                field: Some(e.field.clone()),
            },
            Self::Malformed { .. } | Self::TooLarge(_) => ErrorBody {
                error: self.to_string(),
                field: Some("(body)".to_owned()),
            },
            Self::Refused(_) => ErrorBody {
                error: self.to_string(),
                field: Some("instance".to_owned()),
            },
            Self::PreconditionFailed(_) => ErrorBody {
                error: self.to_string(),
                field: Some("if-match".to_owned()),
            },
            _ => ErrorBody {
                error: self.to_string(),
                field: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable | Self::Conflict | Self::Refused(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
