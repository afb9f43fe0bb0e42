//! An upstream whose handler does real database work: each request takes a connection from
//! a bounded pool and runs `SELECT pg_sleep(work)` on PostgreSQL, so its latency grows with
//! contention like any service in front of a database. `set_work` slows it down mid-test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};

/// The pool and its knobs, shared by every request.
struct Shared {
    /// Idle connections; a permit guarantees one is there.
    idle: std::sync::Mutex<Vec<Client>>,
    permits: Semaphore,
    work_us: AtomicU64,
}

/// A running database-backed upstream on 127.0.0.1. Stops with the runtime it runs on.
pub struct PgUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl PgUpstream {
    /// Connects `pool` clients to `dsn` and serves on a free port.
    pub async fn start(dsn: &str, pool: usize, work: Duration) -> Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..pool.max(1) {
            let (client, conn) = tokio_postgres::connect(dsn, NoTls)
                .await
                .context("connecting the pool")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            clients.push(client);
        }
        let shared = Arc::new(Shared {
            permits: Semaphore::new(clients.len()),
            idle: std::sync::Mutex::new(clients),
            work_us: AtomicU64::new(u64::try_from(work.as_micros()).unwrap_or(u64::MAX)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serving = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, hyper::Error>(handle(&shared).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the database work each request does from now on.
    pub fn set_work(&self, work: Duration) {
        let us = u64::try_from(work.as_micros()).unwrap_or(u64::MAX);
        self.shared.work_us.store(us, Ordering::SeqCst);
    }
}

async fn handle(shared: &Shared) -> hyper::Response<Full<Bytes>> {
    let result = async {
        let _permit = shared.permits.acquire().await?;
        let client = shared
            .idle
            .lock()
            .map_err(|_| anyhow::anyhow!("pool lock poisoned"))?
            .pop()
            .context("no idle connection under a permit")?;
        let seconds = shared.work_us.load(Ordering::SeqCst) as f64 / 1e6;
        let done = client.execute("SELECT pg_sleep($1)", &[&seconds]).await;
        if let Ok(mut idle) = shared.idle.lock() {
            idle.push(client);
        }
        done?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let (status, body) = match result {
        Ok(()) => (200, "ok\n".to_owned()),
        Err(e) => (500, format!("{e}\n")),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp
}
