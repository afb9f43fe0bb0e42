//! The embedded store: everything in this process. Policy changes are also written to
//! `--policy-file` (temporary file, fsync, rename), so a restart loses only the fleet's
//! live accounting, which the Envoys rebuild within one sync interval.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wipgate_admission::wire::{SyncReply, SyncRequest};

use super::{BoxFuture, FleetStore, StoreError, Versioned};
use crate::clock::SharedClock;
use crate::fleet::{FleetPolicy, InstanceBook, InstanceView, SplitParams};

/// The memory store.
pub struct MemoryStore {
    state: Mutex<State>,
    /// Serializes policy writes, so the file and the state change in the same order.
    writes: tokio::sync::Mutex<()>,
    policy_file: Option<PathBuf>,
    /// Reads the time of syncs (the stale window) and of policy changes (versions).
    clock: SharedClock,
}

struct State {
    policy: Versioned,
    book: InstanceBook,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("policy_file", &self.policy_file)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store holding the policy of `policy_file` when the file exists, else the default.
    ///
    /// Versions are derived from `clock` (ms since the epoch, and at least one more than
    /// the last), so they keep growing across restarts without being stored.
    pub fn open(policy_file: Option<PathBuf>, clock: SharedClock) -> anyhow::Result<Self> {
        let policy = match &policy_file {
            Some(path) if path.exists() => {
                let bytes = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
                FleetPolicy::parse(&bytes)
                    .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?
            }
            _ => FleetPolicy::default(),
        };
        let version = if policy_file.as_ref().is_some_and(|p| p.exists()) {
            clock.now_ms()
        } else {
            0
        };
        Ok(Self {
            state: Mutex::new(State {
                policy: Versioned { policy, version },
                // Envoys may still enforce allowances of this store's previous life.
                book: InstanceBook::starting(clock.now_ms()),
            }),
            writes: tokio::sync::Mutex::new(()),
            policy_file,
            clock,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Internal("memory store lock poisoned".into()))
    }
}

impl FleetStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.lock().map(|_| ()) })
    }

    fn policy(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        Box::pin(async move { Ok(self.lock()?.policy.clone()) })
    }

    fn replace_policy(
        &self,
        expected: u64,
        policy: FleetPolicy,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let _write = self.writes.lock().await;
            let current = self.lock()?.policy.version;
            if current != expected {
                return Err(StoreError::Conflict);
            }
            if let Some(path) = self.policy_file.clone() {
                let bytes = serde_json::to_vec_pretty(&policy)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
                    .map_err(|e| {
                        StoreError::Unavailable(format!("writing the policy file: {e}"))
                    })?;
            }
            let mut state = self.lock()?;
            let version = self.clock.now_ms().max(current + 1);
            state.policy = Versioned { policy, version };
            Ok(version)
        })
    }

    fn sync(
        &self,
        report: SyncRequest,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<SyncReply, StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut state = self.lock()?;
            let State { policy, book } = &mut *state;
            Ok(book.sync(now, &report, &policy.policy, policy.version, params)?)
        })
    }

    fn instances(
        &self,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<(Vec<InstanceView>, u64), StoreError>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut state = self.lock()?;
            state.book.prune(now, params.stale_after_ms);
            Ok((state.book.instances(), now))
        })
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old or the new file,
/// never a part: a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    #[tokio::test]
    async fn policy_survives_a_restart_and_versions_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let store = MemoryStore::open(Some(path.clone()), SystemClock::shared()).unwrap();
        let v0 = store.policy().await.unwrap();
        assert_eq!(v0.version, 0);
        let policy =
            FleetPolicy::parse(br#"{"global_max_inflight": 77, "tenants": {"a": {"max": 5}}}"#)
                .unwrap();
        let v1 = store.replace_policy(0, policy.clone()).await.unwrap();
        assert!(matches!(
            store.replace_policy(0, policy.clone()).await,
            Err(StoreError::Conflict)
        ));
        drop(store);
        let reopened = MemoryStore::open(Some(path.clone()), SystemClock::shared()).unwrap();
        let again = reopened.policy().await.unwrap();
        assert_eq!(again.policy, policy);
        assert!(again.version >= v1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[tokio::test]
    async fn syncs_and_versions_read_the_injected_clock() {
        let clock = ManualClock::new(5_000);
        let store = MemoryStore::open(None, clock.clone()).unwrap();
        let params = SplitParams {
            floor_percent: 10,
            stale_after_ms: 1_000,
            ..SplitParams::default()
        };
        let report = |id: &str| SyncRequest {
            instance: id.to_owned(),
            ..SyncRequest::default()
        };
        store.sync(report("gone"), params).await.unwrap();
        store.sync(report("stays"), params).await.unwrap();
        let (views, now) = store.instances(params).await.unwrap();
        assert_eq!((views.len(), now), (2, 5_000));
        assert_eq!(views[0].last_seen_ms, 5_000);
        // Exactly the stale window later both are still live; one ms more and only the
        // instance that synced again is.
        clock.advance(1_000);
        assert_eq!(store.instances(params).await.unwrap().0.len(), 2);
        clock.advance(1);
        store.sync(report("stays"), params).await.unwrap();
        let (views, now) = store.instances(params).await.unwrap();
        assert_eq!(now, 6_001);
        let ids: Vec<_> = views.iter().map(|v| v.instance.as_str()).collect();
        assert_eq!(ids, ["stays"]);
        // A policy version is the time of the change, and at least one more than the last.
        let policy = FleetPolicy::default();
        assert_eq!(
            store.replace_policy(0, policy.clone()).await.unwrap(),
            6_001
        );
        assert_eq!(store.replace_policy(6_001, policy).await.unwrap(), 6_002);
    }

    #[test]
    fn a_broken_policy_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, br#"{"global_max_inflight": 0}"#).unwrap();
        let err = MemoryStore::open(Some(path), SystemClock::shared())
            .unwrap_err()
            .to_string();
        assert!(err.contains("global_max_inflight"), "{err}");
    }
}
