//! The Redis store: any number of control-service replicas share one fleet.
//!
//! Keys (all under `--redis-prefix`, default `wipgate:`): `policy` (hash: `json`,
//! `version`), `live` (sorted set: instance id → last sync, ms by Redis's clock), `agg`
//! (hash: per dimension the fleet's demand `d|DIM` and granted sum `g|DIM`), and
//! `inst:ID` per instance (hash: `report`, `seen`, `d|DIM`, `g|DIM`). Everything that
//! reads and writes several keys runs as one Lua script, so it is atomic. The one clock is
//! Redis's (`TIME`), so replicas with skewed clocks agree on who is stale.
//!
//! With `--redis-cluster` the keys share one hash tag (the prefix, `{wipgate:}live`, …), so
//! every script's keys, the per-instance keys it computes included, are in one slot.
//!
//! A sync takes two scripts: `report.lua` records the demand (or refuses a joining instance
//! beyond the caps) and returns the fleet sums; the targets are computed here with the same
//! code as the memory store; `grant.lua` clips them against what the other instances hold
//! and stores what this one holds now (allowance.rs, step 4). An instance's key is its id,
//! or its id and its process's nonce (`book_key`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use wipgate_admission::wire::{SyncReply, SyncRequest};

use super::{BoxFuture, FleetStore, StoreError, Versioned};
use crate::fleet::allowance::{
    build_reply, demands, fleet_limits, in_force, target_share, warm_up_cap,
};
use crate::fleet::instance_book::{book_key, Refusal};
use crate::fleet::{Dim, FleetPolicy, InstanceView, SplitParams};

/// Demands are capped so that Lua's doubles and `HINCRBY` stay exact.
const MAX_DEMAND: u64 = 1 << 40;
/// A sync retries this often when the policy changes under it.
const SYNC_ATTEMPTS: usize = 4;

/// Where the store connects: one Redis, or the seed nodes of a Redis Cluster.
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to either; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis store.
pub struct RedisStore {
    client: Client,
    /// Connected on first use; afterwards the connection reconnects by itself.
    conn: tokio::sync::OnceCell<Conn>,
    /// Held while connecting, so that one task connects at a time.
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    keys: Keys,
    scripts: Scripts,
    /// The policy the last sync saw, to know which dimensions to report.
    cached: RwLock<Arc<Versioned>>,
}

struct Keys {
    live: String,
    agg: String,
    policy: String,
    instance_prefix: String,
}

struct Scripts {
    report: Script,
    grant: Script,
    put_policy: Script,
    instances: Script,
}

impl RedisStore {
    /// A store on `url` with keys under `prefix`; does not connect yet. With `cluster`,
    /// `url` is a comma-separated list of seed nodes of a Redis Cluster, and the prefix is
    /// made a hash tag (`{PREFIX}`) unless it holds one: every key of the fleet is then in
    /// one slot, so each Lua script runs on one node. `rediss://` URLs connect with TLS,
    /// trusting `ca` (PEM) when given, else the system's roots.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        cluster: bool,
        ca: Option<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: ca.clone(),
        };
        let bad_url = |e: redis::RedisError| anyhow::anyhow!("--redis-url: {e}");
        let (client, prefix) = if cluster {
            let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
            let tls = ca.is_some() && nodes.iter().all(|n| n.starts_with("rediss://"));
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1);
            if tls {
                builder = builder.certs(certs());
            }
            let client = builder.build().map_err(bad_url)?;
            (Client::Cluster(client), hash_tagged(prefix))
        } else {
            let client = if ca.is_some() && url.starts_with("rediss://") {
                redis::Client::build_with_tls(url, certs())
            } else {
                redis::Client::open(url)
            }
            .map_err(bad_url)?;
            (Client::Single(client), prefix.to_owned())
        };
        let prefix = prefix.as_str();
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
            keys: Keys {
                live: format!("{prefix}live"),
                agg: format!("{prefix}agg"),
                policy: format!("{prefix}policy"),
                instance_prefix: format!("{prefix}inst:"),
            },
            scripts: Scripts {
                report: Script::new(include_str!("report.lua")),
                grant: Script::new(include_str!("grant.lua")),
                put_policy: Script::new(include_str!("put_policy.lua")),
                instances: Script::new(include_str!("instances.lua")),
            },
            cached: RwLock::new(Arc::new(Versioned {
                policy: FleetPolicy::default(),
                version: 0,
            })),
        })
    }

    /// Stores `policy` unless Redis already holds one; true when it was stored.
    pub async fn seed(&self, policy: FleetPolicy) -> Result<bool, StoreError> {
        match self.replace_policy(0, policy).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        // Until the first connection, callers wait their turn (within the timeout) rather
        // than each opening a connection of their own.
        let _turn = tokio::time::timeout(self.timeout * 2, self.connecting.lock())
            .await
            .map_err(|_| StoreError::Unavailable("connecting to Redis".into()))?;
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let conn = match &self.client {
            Client::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                let connecting = ConnectionManager::new_with_config(client.clone(), config);
                tokio::time::timeout(self.timeout * 2, connecting)
                    .await
                    .map_err(|_| StoreError::Unavailable("connecting to Redis timed out".into()))?
                    .map(Conn::Single)
            }
            Client::Cluster(client) => {
                tokio::time::timeout(self.timeout * 2, client.get_async_connection())
                    .await
                    .map_err(|_| StoreError::Unavailable("connecting to Redis timed out".into()))?
                    .map(Conn::Cluster)
            }
        }
        .map_err(unavailable)?;
        self.check_eviction_policy(&mut conn.clone()).await?;
        Ok(self.conn.get_or_init(|| async { conn }).await.clone())
    }

    /// Refuses a Redis that may evict keys without a TTL (`allkeys-*`): it could drop the
    /// fleet's records, and with them what Envoys hold, so the sums would no longer hold.
    /// `noeviction` and the `volatile-*` policies (the fleet's keys have no TTL) are fine; a
    /// Redis that does not allow `CONFIG GET` (managed services) is taken as it is.
    async fn check_eviction_policy(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let reply: redis::RedisResult<Vec<String>> = self
            .run_raw(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(conn),
            )
            .await?;
        match reply {
            Ok(pair) => match pair.get(1) {
                Some(policy) if policy.starts_with("allkeys-") => Err(StoreError::Internal(
                    format!("Redis maxmemory-policy is {policy}: it can evict the fleet's keys; use noeviction (or a volatile-* policy)"),
                )),
                _ => Ok(()),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read Redis's maxmemory-policy; make sure it is noeviction");
                Ok(())
            }
        }
    }

    /// Runs one Redis call within the timeout; the call's own error is the caller's.
    async fn run_raw<T, F>(&self, call: F) -> Result<redis::RedisResult<T>, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Unavailable("Redis timed out".into()))
    }

    /// Runs one Redis call within the timeout; errors become [`StoreError`]s.
    async fn run<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Unavailable("Redis timed out".into()))?
            .map_err(unavailable)
    }

    fn cached_policy(&self) -> Arc<Versioned> {
        self.cached
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    fn remember(&self, policy: Versioned) -> Arc<Versioned> {
        let policy = Arc::new(policy);
        if let Ok(mut slot) = self.cached.write() {
            *slot = Arc::clone(&policy);
        }
        policy
    }

    async fn sync_once(
        &self,
        conn: &mut Conn,
        report: &SyncRequest,
        report_json: &str,
        params: SplitParams,
    ) -> Result<Option<SyncReply>, StoreError> {
        let policy = self.cached_policy();
        let own = demands(report, &policy.policy);
        let enforced = in_force(report, &policy.policy);
        let key = book_key(report);
        let mut call = self.scripts.report.prepare_invoke();
        call.key(&self.keys.live)
            .key(&self.keys.agg)
            .key(&self.keys.policy);
        call.arg(&self.keys.instance_prefix)
            .arg(&key)
            .arg(params.stale_after_ms)
            .arg(report_json)
            .arg(params.max_instances)
            .arg(params.max_joins_per_s);
        for (dim, demand) in &own {
            call.arg(dim.key()).arg((*demand).min(MAX_DEMAND));
        }
        let out: Vec<Value> = self.run(call.invoke_async(conn)).await?;
        if text(out.first()).as_deref() == Some("refused") {
            return Err(StoreError::Refused(
                if text(out.get(1)).as_deref() == Some("joins") {
                    Refusal::TooManyJoins
                } else {
                    Refusal::TooManyInstances
                },
            ));
        }
        let now = int(out.first())?;
        let live = int(out.get(1))?;
        let current = parse_policy(out.get(2), out.get(3))?;
        let born = int(out.get(4))?;
        if current.version != policy.version {
            // The dimensions reported were those of an older policy: report again.
            self.remember(current);
            return Ok(None);
        }
        let warming = now < born.saturating_add(params.warm_up_ms);
        let limits = fleet_limits(&policy.policy);
        let mut call = self.scripts.grant.prepare_invoke();
        call.key(&self.keys.live)
            .key(&self.keys.agg)
            .key(&self.keys.policy);
        call.arg(&self.keys.instance_prefix)
            .arg(&key)
            .arg(policy.version.to_string())
            .arg(if warming { "1" } else { "0" });
        let instances = u32::try_from(live).unwrap_or(u32::MAX);
        for (i, (dim, own_demand)) in own.iter().enumerate() {
            let fleet_demand = int(out.get(5 + i))?;
            let limit = limits.get(dim).copied().unwrap_or(0);
            let held = enforced.get(dim).copied();
            let mut target = target_share(
                limit,
                instances,
                fleet_demand,
                (*own_demand).min(MAX_DEMAND),
                params,
            );
            if warming {
                target = warm_up_cap(target, limit, instances, held);
            }
            call.arg(dim.key())
                .arg(target)
                .arg(limit)
                .arg(held.unwrap_or(0));
        }
        let granted: Vec<Value> = self.run(call.invoke_async(conn)).await?;
        if text(granted.first()).as_deref() != Some("ok") {
            return Ok(None);
        }
        let mut grants = BTreeMap::new();
        for (i, dim) in own.keys().enumerate() {
            grants.insert(
                dim.clone(),
                u32::try_from(int(granted.get(1 + i))?).unwrap_or(0),
            );
        }
        Ok(Some(build_reply(
            &report.instance,
            &policy.policy,
            policy.version,
            &grants,
            params,
        )))
    }
}

impl FleetStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let _: String = self.run(redis::cmd("PING").query_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn policy(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let out: Vec<Value> = self
                .run(
                    redis::cmd("HMGET")
                        .arg(&self.keys.policy)
                        .arg("json")
                        .arg("version")
                        .query_async(&mut conn),
                )
                .await?;
            parse_policy(out.first(), out.get(1))
        })
    }

    fn replace_policy(
        &self,
        expected: u64,
        policy: FleetPolicy,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let json =
                serde_json::to_string(&policy).map_err(|e| StoreError::Internal(e.to_string()))?;
            let mut call = self.scripts.put_policy.key(&self.keys.policy);
            call.arg(expected.to_string()).arg(json);
            let version: i64 = self.run(call.invoke_async(&mut conn)).await?;
            let version = u64::try_from(version).map_err(|_| StoreError::Conflict)?;
            self.remember(Versioned { policy, version });
            Ok(version)
        })
    }

    fn sync(
        &self,
        report: SyncRequest,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<SyncReply, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let report_json =
                serde_json::to_string(&report).map_err(|e| StoreError::Internal(e.to_string()))?;
            for _ in 0..SYNC_ATTEMPTS {
                if let Some(reply) = self
                    .sync_once(&mut conn, &report, &report_json, params)
                    .await?
                {
                    return Ok(reply);
                }
            }
            Err(StoreError::Conflict)
        })
    }

    fn instances(
        &self,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<(Vec<InstanceView>, u64), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let mut call = self.scripts.instances.key(&self.keys.live);
            call.key(&self.keys.policy)
                .arg(&self.keys.instance_prefix)
                .arg(params.stale_after_ms);
            let out: Vec<Value> = self.run(call.invoke_async(&mut conn)).await?;
            let now = int(out.first())?;
            let policy = parse_policy(out.get(1), out.get(2))?;
            let mut views = Vec::new();
            for entry in out.iter().skip(3) {
                let Value::Array(fields) = entry else {
                    continue;
                };
                // The member is the instance's key; the report names its id and nonce.
                let Some(report) = text(fields.get(2)) else {
                    continue;
                };
                let Ok(report) = serde_json::from_str::<SyncRequest>(&report) else {
                    continue;
                };
                let mut grants = BTreeMap::new();
                if let Some(Value::Array(pairs)) = fields.get(3) {
                    for pair in pairs.chunks(2) {
                        if let (Some(dim), Ok(g)) = (
                            text(pair.first()).and_then(|k| Dim::parse(&k)),
                            int(pair.get(1)),
                        ) {
                            grants.insert(dim, u32::try_from(g).unwrap_or(0));
                        }
                    }
                }
                let allowance = build_reply(
                    &report.instance,
                    &policy.policy,
                    policy.version,
                    &grants,
                    params,
                );
                views.push(InstanceView {
                    instance: report.instance.clone(),
                    nonce: report.nonce.clone(),
                    last_seen_ms: int(fields.get(1))?,
                    report,
                    allowance,
                });
            }
            Ok((views, now))
        })
    }
}

/// `prefix` as a hash tag, `{prefix}`, unless it holds one already (`wipgate:{fleet1}:`).
fn hash_tagged(prefix: &str) -> String {
    let tagged = prefix
        .find('{')
        .is_some_and(|open| prefix[open + 1..].find('}').is_some_and(|len| len > 0));
    if tagged {
        prefix.to_owned()
    } else {
        format!("{{{prefix}}}")
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(e.to_string())
    } else if matches!(
        e.kind(),
        redis::ErrorKind::ResponseError | redis::ErrorKind::TypeError
    ) {
        StoreError::Internal(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(value: Option<&Value>) -> Result<u64, StoreError> {
    let parsed = match value {
        Some(Value::Int(i)) => u64::try_from(*i).ok(),
        Some(Value::Nil) => Some(0),
        other => text(other)
            .and_then(|s| s.parse::<f64>().ok())
            .map(|f| f.max(0.0) as u64),
    };
    parsed.ok_or_else(|| StoreError::Internal(format!("unexpected Redis value {value:?}")))
}

fn parse_policy(json: Option<&Value>, version: Option<&Value>) -> Result<Versioned, StoreError> {
    let version = int(version)?;
    match text(json) {
        None => Ok(Versioned {
            policy: FleetPolicy::default(),
            version,
        }),
        Some(json) => FleetPolicy::parse(json.as_bytes())
            .map(|policy| Versioned { policy, version })
            .map_err(|e| StoreError::Internal(format!("stored policy is invalid: {e}"))),
    }
}
