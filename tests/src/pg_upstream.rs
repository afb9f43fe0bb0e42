//! An upstream whose handler does real database work: each request takes a connection from
//! a bounded pool and runs its work on PostgreSQL, so its latency grows with contention like
//! any service in front of a database. Two kinds of work ([`PgWork`]): `SELECT pg_sleep(work)`
//! (a slow query), or a short transaction on one of a few hot rows (lock contention: the
//! transactions on one row run one after the other). `set_work` slows either down mid-test.
//!
//! Waiting for a pool connection ends with the request (a client that gives up leaves the
//! queue); once on the database, the work runs to its end whatever the client does, as in a
//! server that does not cancel queries, and the connection always returns to the pool.

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
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

use crate::upstream_stats::UpstreamStats;

/// What one request does on its database connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgWork {
    /// `SELECT pg_sleep(work)`: a slow query, no contention between requests.
    Sleep,
    /// A short transaction on one of `rows` hot rows of table `hot` (see
    /// [`HOT_ROWS_SCHEMA`]), the row chosen at random:
    /// `BEGIN; UPDATE hot SET n = n + 1 WHERE id = $1; SELECT pg_sleep(work); COMMIT`. The
    /// row stays locked for the transaction's work, so transactions on one row wait for each
    /// other: at most `rows` make progress at once, however large the pool.
    HotRows {
        /// How many hot rows (ids 1 ..= rows).
        rows: u32,
    },
}

/// The hot-rows table: `hot(id, n)`; [`prepare_hot_rows`] creates it.
pub const HOT_ROWS_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS hot (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)";
/// The hot-rows transaction's update, `$1` the row's id.
pub const HOT_ROWS_UPDATE: &str = "UPDATE hot SET n = n + 1 WHERE id = $1";
/// The work done while a row is locked (and the whole of [`PgWork::Sleep`]), `$1` seconds.
pub const WORK: &str = "SELECT pg_sleep($1)";

/// Creates the hot-rows table on `dsn` with rows 1 ..= `rows` (again: a no-op).
pub async fn prepare_hot_rows(dsn: &str, rows: u32) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .context("connecting to create the hot rows")?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    client.batch_execute(HOT_ROWS_SCHEMA).await?;
    let rows = i32::try_from(rows).context("too many hot rows")?;
    client
        .execute(
            "INSERT INTO hot SELECT g, 0 FROM generate_series(1, $1::int) g ON CONFLICT DO NOTHING",
            &[&rows],
        )
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// The hot-rows transaction as a `pgbench -f` script, statement for statement what the
/// upstream runs (pgbench's own protocol and row choice), for measuring the database's
/// capacity with pgbench itself.
#[must_use]
pub fn hot_rows_pgbench_script(rows: u32, work: Duration) -> String {
    format!(
        "\\set id random(1, {rows})\nBEGIN;\n{};\n{};\nCOMMIT;\n",
        HOT_ROWS_UPDATE.replace("$1", ":id"),
        WORK.replace("$1", &format!("{:.6}", work.as_secs_f64())),
    )
}

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    update: Statement,
    work: Statement,
}

/// The pool and its knobs, shared by every request.
struct Shared {
    /// Idle connections; a permit guarantees one is there.
    idle: std::sync::Mutex<Vec<Conn>>,
    permits: Semaphore,
    work_us: AtomicU64,
    kind: PgWork,
    stats: Arc<UpstreamStats>,
    /// xorshift64 state for the hot row's id.
    rng: AtomicU64,
}

/// A running database-backed upstream on 127.0.0.1. Stops accepting when dropped (requests
/// already on the database finish); runs on the caller's tokio runtime.
pub struct PgUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl PgUpstream {
    /// Connects `pool` clients to `dsn` and serves `SELECT pg_sleep(work)` on a free port.
    pub async fn start(dsn: &str, pool: usize, work: Duration) -> Result<Self> {
        Self::start_with(dsn, pool, work, PgWork::Sleep).await
    }

    /// Connects `pool` clients to `dsn` and serves `kind` of work on a free port; for
    /// [`PgWork::HotRows`], [`prepare_hot_rows`] first.
    pub async fn start_with(dsn: &str, pool: usize, work: Duration, kind: PgWork) -> Result<Self> {
        let mut conns = Vec::new();
        for _ in 0..pool.max(1) {
            let (client, conn) = tokio_postgres::connect(dsn, NoTls)
                .await
                .context("connecting the pool")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let update = match kind {
                PgWork::HotRows { .. } => HOT_ROWS_UPDATE,
                // Unused for sleeps; any statement will do.
                PgWork::Sleep => WORK,
            };
            let update = client.prepare(update).await.context("preparing")?;
            let work = client.prepare(WORK).await.context("preparing")?;
            conns.push(Conn {
                client,
                update,
                work,
            });
        }
        let shared = Arc::new(Shared {
            permits: Semaphore::new(conns.len()),
            idle: std::sync::Mutex::new(conns),
            work_us: AtomicU64::new(u64::try_from(work.as_micros()).unwrap_or(u64::MAX)),
            kind,
            stats: Arc::new(UpstreamStats::default()),
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serving = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, hyper::Error>(handle(shared).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            accept,
        })
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

    /// Its gauges: a request counts from its arrival until its database work is done.
    #[must_use]
    pub fn stats(&self) -> &Arc<UpstreamStats> {
        &self.shared.stats
    }

    /// Requests in the upstream now: waiting for a connection or on the database.
    #[must_use]
    pub fn inflight(&self) -> usize {
        self.shared.stats.inflight()
    }

    /// The most requests in the upstream at once since the last reset.
    #[must_use]
    pub fn max_inflight(&self) -> usize {
        self.shared.stats.max_inflight()
    }

    /// Zeroes the totals and lowers the maximum to what is in flight now.
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }
}

impl Drop for PgUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Shared {
    fn next_row(&self, rows: u32) -> i32 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        i32::try_from(x % u64::from(rows.max(1))).unwrap_or(0) + 1
    }
}

/// One request's work on `conn`; the transaction is rolled back if a statement fails.
async fn run(shared: &Shared, conn: &mut Conn) -> Result<()> {
    #[allow(clippy::cast_precision_loss)]
    let seconds = shared.work_us.load(Ordering::SeqCst) as f64 / 1e6;
    match shared.kind {
        PgWork::Sleep => {
            conn.client.execute(&conn.work, &[&seconds]).await?;
        }
        PgWork::HotRows { rows } => {
            let id = shared.next_row(rows);
            let tx = conn.client.transaction().await?;
            tx.execute(&conn.update, &[&id]).await?;
            tx.execute(&conn.work, &[&seconds]).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

async fn handle(shared: Arc<Shared>) -> hyper::Response<Full<Bytes>> {
    let guard = shared.stats.enter("");
    let result = async {
        // Dropped with the request while it waits: a client that gave up leaves the queue.
        let permit = shared.permits.acquire().await?;
        let mut conn = shared
            .idle
            .lock()
            .map_err(|_| anyhow::anyhow!("pool lock poisoned"))?
            .pop()
            .context("no idle connection under a permit")?;
        // On the database, the work runs to its end in a task of its own, and the connection
        // goes back to the pool whatever became of the request.
        permit.forget();
        let worker = Arc::clone(&shared);
        tokio::spawn(async move {
            let done = run(&worker, &mut conn).await;
            if let Ok(mut idle) = worker.idle.lock() {
                idle.push(conn);
            }
            worker.permits.add_permits(1);
            drop(guard);
            done
        })
        .await?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pgbench_script_runs_the_upstream_statements() {
        let script = hot_rows_pgbench_script(4, Duration::from_millis(10));
        assert_eq!(
            script,
            "\\set id random(1, 4)\nBEGIN;\nUPDATE hot SET n = n + 1 WHERE id = :id;\n\
             SELECT pg_sleep(0.010000);\nCOMMIT;\n"
        );
    }
}
