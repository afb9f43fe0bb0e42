//! A throwaway PostgreSQL cluster per test: `initdb` + `pg_ctl` in a tempdir on a free
//! port, trust auth, stopped (immediate) and deleted on drop. initdb refuses root, so as
//! root the tools run as `postgres` through `runuser` and the tempdir is chowned to it.
//! `initdb`/`pg_ctl` are taken from PATH, else from Debian's /usr/lib/postgresql/VER/bin.
//! Only where neither exists does [`TestDb::start`] fall back to `PG_TEST_DSN`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::free_port;

/// A database to probe: our own cluster, or `PG_TEST_DSN`'s.
pub struct TestDb {
    dsn: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    dir: tempfile::TempDir,
    pg_ctl: PathBuf,
}

fn pg_binary(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !path.is_empty() {
        return Some(PathBuf::from(path));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn run(tool: &PathBuf, args: &[&str]) -> Result<(), String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", tool.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {args:?}: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl TestDb {
    /// A fresh cluster allowing `max_connections` connections; `PG_TEST_DSN` only when
    /// there is no initdb here (then `None` when the test needs its own settings).
    pub fn start(max_connections: Option<u32>) -> Option<Self> {
        let (Some(initdb), Some(pg_ctl)) = (pg_binary("initdb"), pg_binary("pg_ctl")) else {
            let dsn = std::env::var("PG_TEST_DSN").ok().filter(|d| !d.is_empty());
            return match (dsn, max_connections) {
                (Some(dsn), None) => Some(Self { dsn, cluster: None }),
                (Some(_), Some(_)) => {
                    eprintln!("skipped: needs its own cluster and there is no initdb");
                    None
                }
                (None, _) => panic!(
                    "initdb/pg_ctl not found (apt-get install -y postgresql, or set PG_TEST_DSN)"
                ),
            };
        };
        let dir = tempfile::Builder::new()
            .prefix("wipgate-control-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let data = dir.path().join("data").to_string_lossy().into_owned();
        run(
            &initdb,
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )
        .unwrap();
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections={} -c fsync=off \
             -c shared_buffers=16MB",
            dir.path().display(),
            max_connections.unwrap_or(100)
        );
        let log = format!("{}/postgres.log", dir.path().display());
        let cluster = Cluster { dir, pg_ctl };
        if let Err(e) = run(
            &cluster.pg_ctl,
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "30", "start",
            ],
        ) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{e}\n{log}");
        }
        Some(Self {
            dsn: format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            cluster: Some(cluster),
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

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(c) = &self.cluster {
            let data = c.dir.path().join("data").to_string_lossy().into_owned();
            let _ = run(&c.pg_ctl, &["-D", &data, "-m", "immediate", "stop"]);
        }
    }
}
