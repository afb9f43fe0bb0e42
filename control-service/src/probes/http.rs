//! The HTTP probe: a `GET` on a new connection per sample (so connecting counts in the
//! latency, as it does for the callers of the resource), timed to the response head.
//! `http://` only.

use std::time::Instant;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;

use super::{ProbeSample, ProbeSpec};
use crate::http_client::{self, Target};

pub(super) struct HttpProbe {
    uri: Uri,
    target: Target,
}

impl HttpProbe {
    pub(super) fn new(spec: &ProbeSpec) -> Result<Self, String> {
        let url = spec.url.as_deref().unwrap_or_default();
        let uri: Uri = url.parse().map_err(|e| format!("url: {e}"))?;
        let target = Target::of(&uri).map_err(|e| format!("url: {e}"))?;
        Ok(Self { uri, target })
    }

    pub(super) async fn sample(&mut self) -> Result<ProbeSample, String> {
        let started = Instant::now();
        let path = self
            .uri
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str);
        let request = hyper::Request::get(path)
            .header(hyper::header::USER_AGENT, "wipgate-probe")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("request: {e}"))?;
        let response = http_client::send(&self.target, request).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (response, conn) = response?;
        conn.abort();
        Ok(ProbeSample::Http {
            status: response.status().as_u16(),
            latency_ms,
        })
    }
}
