//! Opens the store the settings ask for; a Redis store is seeded from `--policy-file` in
//! the background.

use std::sync::Arc;
use std::time::Duration;

use super::{FleetStore, MemoryStore, RedisStore};
use crate::clock::{SharedClock, SystemClock};
use crate::fleet::FleetPolicy;
use crate::settings::Settings;

/// [`open_store_with_clock`] with the system clock.
pub fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn FleetStore>> {
    open_store_with_clock(settings, SystemClock::shared())
}

/// Builds the store `settings` ask for. The Redis store is seeded from `--policy-file` in
/// the background (Redis may not be up yet); the memory store loads the file now and reads
/// `clock` (the Redis store reads Redis's).
pub fn open_store_with_clock(
    settings: &Settings,
    clock: SharedClock,
) -> anyhow::Result<Arc<dyn FleetStore>> {
    match &settings.redis_url {
        None => Ok(Arc::new(MemoryStore::open(
            settings.policy_file.clone(),
            clock,
        )?)),
        Some(url) => {
            let ca = match &settings.redis_ca_file {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| anyhow::anyhow!("--redis-ca-file {}: {e}", path.display()))?,
                ),
                None => None,
            };
            let store = Arc::new(RedisStore::new(
                url,
                &settings.redis_prefix,
                Duration::from_millis(settings.redis_timeout_ms),
                settings.redis_cluster,
                ca,
            )?);
            if let Some(path) = &settings.policy_file {
                let bytes = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
                let policy = FleetPolicy::parse(&bytes)
                    .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
                seed_in_background(Arc::clone(&store), policy);
            }
            Ok(store)
        }
    }
}

/// Stores `policy` in Redis unless Redis already holds one, retrying every second while
/// Redis cannot be reached.
fn seed_in_background(store: Arc<RedisStore>, policy: FleetPolicy) {
    tokio::spawn(async move {
        loop {
            match store.seed(policy.clone()).await {
                Ok(true) => break tracing::info!("seeded Redis with the policy file"),
                Ok(false) => {
                    break tracing::info!("Redis already holds a policy; policy file not used")
                }
                Err(e) => tracing::warn!(error = %e, "seeding the policy: retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
