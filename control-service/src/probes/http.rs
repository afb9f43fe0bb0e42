//! The HTTP probe: a `GET` on a new connection per sample (so connecting counts in the
//! latency, as it does for the callers of the resource), timed to the response head.
//! `http://` only.

use std::time::Instant;

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{ProbeSample, ProbeSpec};

pub(super) struct HttpProbe {
    uri: Uri,
    host: String,
    port: u16,
    authority: String,
}

impl HttpProbe {
    pub(super) fn new(spec: &ProbeSpec) -> Result<Self, String> {
        let url = spec.url.as_deref().unwrap_or_default();
        let uri: Uri = url.parse().map_err(|e| format!("url: {e}"))?;
        let authority = uri.authority().ok_or("url: no host")?.clone();
        Ok(Self {
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            uri,
        })
    }

    pub(super) async fn sample(&mut self) -> Result<ProbeSample, String> {
        let started = Instant::now();
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::USER_AGENT, "wipgate-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        conn.abort();
        let response = response.map_err(|e| format!("GET {}: {e}", self.uri))?;
        Ok(ProbeSample::Http {
            status: response.status().as_u16(),
            latency_ms,
        })
    }
}
