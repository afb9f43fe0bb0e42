//! What the HTTP probe and the operator CLI need of an HTTP client: one HTTP/1.1 request
//! on a new connection to an `http://` URL (no pool, no TLS), so connecting counts in a
//! probe's latency and a CLI call leaves nothing behind.

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Where requests go: host, port and the `host` header of an `http://` URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host to connect to (brackets of an IPv6 literal removed).
    pub host: String,
    /// The port (80 when the URL has none).
    pub port: u16,
    /// The URL's authority, for the `host` header and messages.
    pub authority: String,
}

impl Target {
    /// The target of `uri`; an error when it has no host or is not `http`.
    pub fn of(uri: &Uri) -> Result<Self, String> {
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(format!("{uri}: only http:// is supported"));
        }
        let authority = uri.authority().ok_or(format!("{uri}: no host"))?;
        Ok(Self {
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
        })
    }
}

/// Sends `request` (its `host` header set here) and returns the response head with the
/// connection's task, which serves the body until it is read or the task aborted.
pub async fn send(
    target: &Target,
    mut request: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::Response<Incoming>, JoinHandle<()>), String> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connecting to {}: {e}", target.authority))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {}: {e}", target.authority))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = http::HeaderValue::from_str(&target.authority).map_err(|e| e.to_string())?;
    request.headers_mut().insert(http::header::HOST, host);
    let method = request.method().clone();
    let uri = request.uri().clone();
    match sender.send_request(request).await {
        Ok(response) => Ok((response, conn)),
        Err(e) => {
            conn.abort();
            Err(format!("{method} {uri} on {}: {e}", target.authority))
        }
    }
}
