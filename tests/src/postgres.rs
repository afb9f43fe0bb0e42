//! A throwaway PostgreSQL cluster for one test: `initdb` + `pg_ctl` in a tempdir, on a free
//! port, trust auth, stopped and deleted on drop. As root it runs as the `postgres` user
//! (initdb refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::processes::free_port;

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    port: u16,
}

/// `initdb` and `pg_ctl`: on PATH, else in Debian's /usr/lib/postgresql/VERSION/bin.
fn pg_binary(name: &str) -> Result<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !path.is_empty() {
            return Ok(PathBuf::from(path));
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("{name} not found: apt-get install -y postgresql"))
}

/// Whether `initdb` and `pg_ctl` are installed (PATH or Debian's location).
#[must_use]
pub fn available() -> bool {
    pg_binary("initdb").is_ok() && pg_binary("pg_ctl").is_ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL tool, as `postgres` when we are root.
fn run(tool: &Path, args: &[&str]) -> Result<()> {
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
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Postgres {
    /// A fresh cluster with `max_connections` allowed connections.
    pub fn start(max_connections: u32) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("wipgate-pg-").tempdir()?;
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()?
                .success();
            anyhow::ensure!(ok, "chown postgres {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let data = data.to_str().context("tempdir path")?.to_owned();
        run(
            &pg_binary("initdb")?,
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} -c fsync=off",
            dir.path().display()
        );
        let log = format!("{}/postgres.log", dir.path().display());
        run(
            &pg_binary("pg_ctl")?,
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "30", "start",
            ],
        )?;
        Ok(Self { dir, port })
    }

    /// A libpq-style connection string for tokio-postgres.
    #[must_use]
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(pg_ctl) = pg_binary("pg_ctl") {
            let data = self.dir.path().join("data");
            let _ = run(
                &pg_ctl,
                &["-D", &data.to_string_lossy(), "-m", "immediate", "stop"],
            );
        }
    }
}
