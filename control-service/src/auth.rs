//! The bearer tokens: the admin token (admin calls) and the sync token (`POST /v1/sync`),
//! both compared in constant time.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured admin token; without one, every admin call is refused.
#[derive(Clone)]
pub struct AdminToken(Option<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminToken(set)"
        } else {
            "AdminToken(none)"
        })
    }
}

impl AdminToken {
    /// Wraps the token (`None`: admin calls are disabled).
    pub fn new(token: Option<String>) -> Self {
        Self(token)
    }

    /// Ok when `headers` carry `authorization: Bearer <token>` with the right token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.0 {
            Some(expected) if bearer_matches(headers, expected) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// The sync token (`--sync-token-file`): with one, `POST /v1/sync` needs it; without one,
/// anyone who reaches the service may sync (the service warns at start).
#[derive(Clone, Default)]
pub struct SyncToken(Option<String>);

impl std::fmt::Debug for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SyncToken(set)"
        } else {
            "SyncToken(none)"
        })
    }
}

impl SyncToken {
    /// Wraps the token (`None`: syncs are not authenticated).
    pub fn new(token: Option<String>) -> Self {
        Self(token)
    }

    /// Whether syncs need a token.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Ok when no token is configured, or `headers` carry it as a bearer token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.0 {
            None => Ok(()),
            Some(expected) if bearer_matches(headers, expected) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized),
        }
    }
}

/// Whether `headers` carry `authorization: Bearer <expected>`.
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    // ct_eq on slices of different lengths returns false without looking at the contents;
    // only the length can leak, which a token's strength does not rest on.
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = AdminToken::new(Some("s3cret".into()));
        assert!(token.check(&headers("Bearer s3cret")).is_ok());
        assert!(token.check(&headers("bearer s3cret")).is_ok());
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(token.check(&headers(bad)).is_err(), "{bad}");
        }
        assert!(token.check(&HeaderMap::new()).is_err());
        assert!(AdminToken::new(None)
            .check(&headers("Bearer s3cret"))
            .is_err());
    }

    #[test]
    fn a_sync_token_is_needed_only_when_configured() {
        assert!(SyncToken::new(None).check(&HeaderMap::new()).is_ok());
        let token = SyncToken::new(Some("fleet".into()));
        assert!(token.check(&headers("Bearer fleet")).is_ok());
        for bad in ["Bearer fleet2", "Bearer flee", "fleet", "Basic fleet"] {
            assert!(token.check(&headers(bad)).is_err(), "{bad}");
        }
        assert!(token.check(&HeaderMap::new()).is_err());
    }
}
