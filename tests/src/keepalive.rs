//! Many requests over a few keep-alive connections, for volume rather than concurrency
//! (e.g. 100,000 distinct tenants): each connection sends its share one after another.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;
use tokio::task::JoinSet;

use crate::client::{connect, request_on, RequestSpec};

/// How many requests got which answer: status (`None`: no answer) and `x-wipgate-reason`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Requests by status.
    pub by_status: BTreeMap<Option<u16>, usize>,
    /// Rejections by reason.
    pub by_reason: BTreeMap<String, usize>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
    }

    /// Requests answered with `status`.
    #[must_use]
    pub fn status(&self, status: u16) -> usize {
        self.by_status.get(&Some(status)).copied().unwrap_or(0)
    }
}

/// Sends requests `0..n` (built by `spec_fn`) over `connections` keep-alive connections;
/// a connection that fails is replaced, and the request counted as unanswered.
pub async fn keepalive(
    addr: SocketAddr,
    connections: usize,
    n: usize,
    spec_fn: impl Fn(usize) -> RequestSpec + Send + Sync + Clone + 'static,
) -> Result<Tally> {
    let connections = connections.max(1);
    let mut set = JoinSet::new();
    for c in 0..connections {
        let spec_fn = spec_fn.clone();
        set.spawn(async move {
            let mut tally = Tally::default();
            let mut conn = connect(addr).await?;
            for i in (c..n).step_by(connections) {
                let answer = request_on(&mut conn.0, addr, &spec_fn(i)).await;
                let status = match answer {
                    Ok((status, headers, _)) => {
                        if let Some(r) = headers
                            .get("x-wipgate-reason")
                            .and_then(|v| v.to_str().ok())
                        {
                            *tally.by_reason.entry(r.to_owned()).or_default() += 1;
                        }
                        Some(status)
                    }
                    Err(_) => {
                        conn.1.abort();
                        conn = connect(addr).await?;
                        None
                    }
                };
                *tally.by_status.entry(status).or_default() += 1;
            }
            conn.1.abort();
            Ok::<_, anyhow::Error>(tally)
        });
    }
    let mut total = Tally::default();
    while let Some(done) = set.join_next().await {
        total.merge(done??);
    }
    Ok(total)
}
