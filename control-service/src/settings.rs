//! All settings in one struct: flags with environment fallbacks and defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `wipgate-control --listen ADDR [--redis-url URL] [--policy-file PATH]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wipgate-control",
    version,
    about = "wipgate's control service: fleet policy and allowances"
)]
pub struct Settings {
    /// Address to serve the API on.
    #[arg(long, env = "WIPGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Redis URL (`redis://host:port/db`); without it the state is kept in memory (one instance).
    #[arg(long, env = "WIPGATE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed Redis's certificate (`rediss://`); without it the
    /// system's roots are trusted.
    #[arg(long, env = "WIPGATE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// `--redis-url` is a comma-separated list of seed nodes of a Redis Cluster; the key
    /// prefix becomes a hash tag, so each script's keys are in one slot.
    #[arg(long, env = "WIPGATE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "WIPGATE_REDIS_PREFIX", default_value = "wipgate:")]
    pub redis_prefix: String,
    /// Timeout of one Redis command, ms.
    #[arg(long, env = "WIPGATE_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// Memory store: the policy is loaded from and saved to this file. Redis store: the file
    /// seeds Redis when Redis holds no policy yet.
    #[arg(long, env = "WIPGATE_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// File holding the admin bearer token (else `WIPGATE_ADMIN_TOKEN`).
    #[arg(long, env = "WIPGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the sync token: with it, `POST /v1/sync` needs `authorization: Bearer
    /// TOKEN` (the filters' `control.token`); without it, syncs are not authenticated.
    #[arg(long, env = "WIPGATE_SYNC_TOKEN_FILE")]
    pub sync_token_file: Option<PathBuf>,
    /// An instance that has not synced for this long drops out and its share is freed, ms.
    #[arg(long, env = "WIPGATE_STALE_AFTER_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1000..=3_600_000))]
    pub stale_after_ms: u64,
    /// Each instance's floor, in percent of an even share.
    #[arg(long, env = "WIPGATE_FLOOR_PERCENT", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub floor_percent: u32,
    /// For this long after the fleet's records start empty (a memory store's start, a Redis
    /// that lost its keys), grants are capped while the census is unknown, ms.
    #[arg(long, env = "WIPGATE_WARM_UP_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub warm_up_ms: u64,
    /// Most live instances; a sync from one more gets 429.
    #[arg(long, env = "WIPGATE_MAX_INSTANCES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    /// Most instances that may join in one second; beyond, a joining one gets 429.
    #[arg(long, env = "WIPGATE_MAX_JOINS_PER_S", default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_joins_per_s: u32,
    /// Largest request body accepted, bytes.
    #[arg(long, env = "WIPGATE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Time limit of one API request, ms.
    #[arg(long, env = "WIPGATE_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// On SIGTERM, report not ready for this long before closing the listener, ms.
    #[arg(long, env = "WIPGATE_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,
    /// Log format.
    #[arg(long, env = "WIPGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Settings {
    /// The admin token: `--admin-token-file` wins over `WIPGATE_ADMIN_TOKEN`. Surrounding
    /// whitespace (a trailing newline in the file) is not part of the token.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        read_admin_token(self.admin_token_file.as_deref())
    }

    /// The sync token from `--sync-token-file`, trimmed; `None` without the flag. A file
    /// that cannot be read, or holds no token, is an error: a service told to authenticate
    /// syncs never starts open.
    pub fn sync_token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.sync_token_file else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--sync-token-file {}: {e}", path.display()))?;
        let token = raw.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!(
                "--sync-token-file {}: the token must be visible ASCII, without spaces",
                path.display()
            );
        }
        Ok(Some(token.to_owned()))
    }
}

/// The admin token from `file` when given, else from `WIPGATE_ADMIN_TOKEN`; trimmed, and
/// `None` when empty. The service and the operator CLI read it the same way.
pub fn read_admin_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let raw = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", path.display()))?,
        ),
        None => std::env::var("WIPGATE_ADMIN_TOKEN").ok(),
    };
    Ok(raw.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}
