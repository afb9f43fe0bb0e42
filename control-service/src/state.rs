//! What the handlers share: the store, the token, the knobs, the metrics, the last replies
//! and the probes, behind one cheap-to-clone handle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::{AdminToken, SyncToken};
use crate::clock::{SharedClock, SystemClock};
use crate::fleet::SplitParams;
use crate::last_replies::LastReplies;
use crate::metrics::Metrics;
use crate::probes::{ProbeHub, ProbeMetrics};
use crate::settings::Settings;
use crate::store::FleetStore;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

/// The shared parts of [`AppState`].
pub struct Inner {
    /// Where the fleet's state lives.
    pub store: Arc<dyn FleetStore>,
    /// The admin token.
    pub token: AdminToken,
    /// The sync token (`POST /v1/sync`); none: syncs are not authenticated.
    pub sync_token: SyncToken,
    /// Split knobs and the stale window.
    pub params: SplitParams,
    /// The metrics.
    pub metrics: Metrics,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// Set on SIGTERM: `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// The last allowance this replica gave each instance, repeated (marked degraded) while
    /// the store is unreachable. Entries older than the allowance's validity are useless
    /// and are swept.
    pub last_replies: Mutex<LastReplies>,
    /// The bottleneck probes of the policy in force and their composite health.
    pub probes: ProbeHub,
    /// The clock the service's logic reads (the memory store has the same one).
    pub clock: SharedClock,
}

impl AppState {
    /// [`AppState::with_clock`] with the system clock.
    pub fn new(
        store: Arc<dyn FleetStore>,
        token: AdminToken,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        Self::with_clock(store, token, settings, SystemClock::shared())
    }

    /// State around `store` with the knobs of `settings`, reading `clock`.
    pub fn with_clock(
        store: Arc<dyn FleetStore>,
        token: AdminToken,
        settings: &Settings,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::new()?;
        let sync_token = SyncToken::new(settings.sync_token()?);
        Ok(Self(Arc::new(Inner {
            store,
            token,
            sync_token,
            params: SplitParams {
                floor_percent: settings.floor_percent,
                stale_after_ms: settings.stale_after_ms,
                warm_up_ms: settings.warm_up_ms,
                max_instances: settings.max_instances,
                max_joins_per_s: settings.max_joins_per_s,
            },
            probes: ProbeHub::new(
                ProbeMetrics::register(metrics.registry())?,
                Arc::clone(&clock),
            ),
            metrics,
            max_body_bytes: settings.max_body_bytes,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            draining: AtomicBool::new(false),
            last_replies: Mutex::new(LastReplies::default()),
            clock,
        })))
    }

    /// Marks the service as draining: `/readyz` fails from now on.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
