//! A database to probe: a throwaway PostgreSQL cluster of the test's own (the e2e harness's
//! `initdb` + `pg_ctl` cluster), or, only where no initdb exists, `PG_TEST_DSN`.

use wipgate_e2e::postgres::{available, Postgres};

/// Our own cluster, or `PG_TEST_DSN`'s database.
pub struct TestDb {
    dsn: String,
    /// Stopped and deleted on drop.
    _cluster: Option<Postgres>,
}

impl TestDb {
    /// A fresh cluster allowing `max_connections` connections; `PG_TEST_DSN` only when
    /// there is no initdb here (then `None` when the test needs its own settings).
    pub fn start(max_connections: Option<u32>) -> Option<Self> {
        if !available() {
            let dsn = std::env::var("PG_TEST_DSN").ok().filter(|d| !d.is_empty());
            return match (dsn, max_connections) {
                (Some(dsn), None) => Some(Self {
                    dsn,
                    _cluster: None,
                }),
                (Some(_), Some(_)) => {
                    eprintln!("skipped: needs its own cluster and there is no initdb");
                    None
                }
                (None, _) => panic!(
                    "initdb/pg_ctl not found (apt-get install -y postgresql, or set PG_TEST_DSN)"
                ),
            };
        }
        let cluster = Postgres::start(max_connections.unwrap_or(100)).unwrap();
        Some(Self {
            dsn: cluster.dsn(),
            _cluster: Some(cluster),
        })
    }

    /// A libpq-style connection string.
    pub fn dsn(&self) -> &str {
        &self.dsn
    }

    /// A new session of the test's own.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}
