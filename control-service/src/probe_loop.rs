//! The task that keeps this replica's probes in line with the stored policy, whichever
//! replica changed it.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// How often each replica checks the store for a policy whose probes differ from the ones
/// it runs (a change through another replica, or the Redis seed).
pub const PROBE_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

impl AppState {
    /// Starts the task that runs the probes of the stored policy: at once, then whenever a
    /// check every [`PROBE_RECONCILE_INTERVAL`] finds a new policy version. The task holds
    /// no strong reference: it ends, and the probes with it, when the state is dropped.
    pub fn start_probes(&self) -> tokio::task::JoinHandle<()> {
        let state = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut applied = None;
            loop {
                let Some(inner) = state.upgrade() else { break };
                match inner.store.policy().await {
                    Ok(current) if applied != Some(current.version) => {
                        inner.probes.apply(current.version, &current.policy.probes);
                        applied = Some(current.version);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "probes: reading the policy"),
                }
                drop(inner);
                tokio::time::sleep(PROBE_RECONCILE_INTERVAL).await;
            }
        })
    }
}
