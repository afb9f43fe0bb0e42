//! The operator CLI's side of the REST API: one request per call on a new connection,
//! the admin token as a bearer token, and the API's `{"error", "field"}` turned into a
//! message that names the field.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Uri};
use http_body_util::{BodyExt, Full};

use crate::http_client::{self, Target};
use crate::routes::policy::POLICY_VERSION_HEADER;

/// How long one call may take, connecting included.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    /// The body.
    pub body: Bytes,
    /// The policy version header, when the answer carries one.
    pub version: Option<String>,
}

/// A write with `If-Match` found the policy at another version (412): read it again.
#[derive(Debug, thiserror::Error)]
#[error("the policy changed meanwhile")]
pub struct StalePolicy;

/// The control service at one URL, with the admin token when there is one.
#[derive(Debug)]
pub struct Api {
    target: Target,
    /// The URL's path without its trailing `/` (a service behind a path prefix).
    prefix: String,
    token: Option<String>,
}

impl Api {
    /// The service at `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("--url {url}"))?;
        let target = Target::of(&uri).map_err(|e| anyhow!("--url {e}"))?;
        Ok(Self {
            target,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `GET path` without credentials.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.call(Method::GET, path, None, false, None).await
    }

    /// An admin call: `method path` with `body` (JSON) and the bearer token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Reply> {
        self.call(method, path, body, true, None).await
    }

    /// [`Api::admin`] that applies only while the policy is at `version` (`If-Match`); a
    /// policy changed meanwhile is the error [`StalePolicy`].
    pub async fn admin_if_match(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        version: &str,
    ) -> Result<Reply> {
        self.call(method, path, body, true, Some(version)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        admin: bool,
        if_match: Option<&str>,
    ) -> Result<Reply> {
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.prefix))
            .header(http::header::USER_AGENT, "wipgate-control-cli");
        if admin {
            let Some(token) = &self.token else {
                bail!("{method} {path} needs the admin token: set WIPGATE_ADMIN_TOKEN or --admin-token-file");
            };
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(version) = if_match {
            request = request.header(http::header::IF_MATCH, version);
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let exchange = async {
            let (response, conn) = http_client::send(&self.target, request)
                .await
                .map_err(|e| anyhow!(e))?;
            let status = response.status();
            let version = response
                .headers()
                .get(POLICY_VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await;
            conn.abort();
            Ok::<_, anyhow::Error>((status, version, body?.to_bytes()))
        };
        let (status, version, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                anyhow!(
                    "{method} {path} on {}: no answer within {CALL_TIMEOUT:?}",
                    self.target.authority
                )
            })??;
        if status == http::StatusCode::PRECONDITION_FAILED && if_match.is_some() {
            return Err(StalePolicy.into());
        }
        if !status.is_success() {
            bail!("{method} {path}: {}", error_message(status.as_u16(), &body));
        }
        Ok(Reply { body, version })
    }
}

/// `422: must be at least 1 (field tenants.acme.max)` from the API's error body.
fn error_message(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v["error"].as_str());
    let field = parsed.as_ref().and_then(|v| v["field"].as_str());
    match (error, field) {
        (Some(e), Some(f)) => format!("{status}: {e} (field {f})"),
        (Some(e), None) => format!("{status}: {e}"),
        _ => format!("{status}: {}", String::from_utf8_lossy(body).trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_name_the_field() {
        let body = br#"{"error": "must be at least 1", "field": "tenants.acme.max"}"#;
        assert_eq!(
            error_message(422, body),
            "422: must be at least 1 (field tenants.acme.max)"
        );
        assert_eq!(
            error_message(401, br#"{"error": "unauthorized"}"#),
            "401: unauthorized"
        );
        assert_eq!(error_message(502, b"bad gateway\n"), "502: bad gateway");
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(Api::new("https://example.com", None).is_err());
        assert!(Api::new("/v1", None).is_err());
        let api =
            Api::new("http://127.0.0.1:8080/wipgate/", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((api.target.port, api.prefix.as_str()), (8080, "/wipgate"));
    }
}
