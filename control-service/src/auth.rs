//! The admin bearer token, compared in constant time.

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
        let Some(expected) = &self.0 else {
            return Err(ApiError::Unauthorized);
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthorized)?;
        // ct_eq on slices of different lengths returns false without looking at the
        // contents; only the length can leak, which a token's strength does not rest on.
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
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
}
