//! The PostgreSQL probe: one connection kept open between samples (reopened after an
//! error or a timeout), without TLS. A sample is two simple queries: the latency of
//! `SELECT 1`, then client sessions, `max_connections` and lock waits from
//! `pg_stat_activity` in one round trip.

use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::{ProbeSample, ProbeSpec};

/// Counts the probe's own session too. Lock waits need the probe's role to see other
/// roles' sessions: `pg_monitor` (or a superuser).
const STATS: &str = "SELECT \
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
    current_setting('max_connections'), \
    (SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock')";

pub(super) struct PgProbe {
    config: Config,
    conn: Option<(Client, JoinHandle<()>)>,
}

impl PgProbe {
    pub(super) fn new(spec: &ProbeSpec) -> Result<Self, String> {
        let dsn = spec.dsn.as_deref().unwrap_or_default();
        let mut config: Config = dsn.parse().map_err(|e| format!("dsn: {e}"))?;
        if let Some(var) = &spec.password_env {
            let password = std::env::var(var)
                .map_err(|_| format!("password_env: environment variable {var} is not set"))?;
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("wipgate-probe");
        }
        Ok(Self { config, conn: None })
    }

    pub(super) fn reset(&mut self) {
        if let Some((_, task)) = self.conn.take() {
            task.abort();
        }
    }

    pub(super) async fn sample(&mut self) -> Result<ProbeSample, String> {
        let result = self.query().await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn query(&mut self) -> Result<ProbeSample, String> {
        if !matches!(&self.conn, Some((c, _)) if !c.is_closed()) {
            self.reset();
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "probe connection closed");
                }
            });
            self.conn = Some((client, task));
        }
        let Some((client, _)) = &self.conn else {
            return Err("no connection".into());
        };
        let started = Instant::now();
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("SELECT 1: {e}"))?;
        let query_latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let rows = client
            .simple_query(STATS)
            .await
            .map_err(|e| format!("pg_stat_activity: {e}"))?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .ok_or("pg_stat_activity: no row")?;
        let number = |i: usize| -> Result<u64, String> {
            row.get(i)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("pg_stat_activity: column {i} is not a count"))
        };
        Ok(ProbeSample::Postgres {
            connections: number(0)?,
            max_connections: number(1)?,
            lock_waits: number(2)?,
            query_latency_ms,
        })
    }
}

impl Drop for PgProbe {
    fn drop(&mut self) {
        self.reset();
    }
}
