//! wipgate's control service: the fleet policy, fleet accounting and each Envoy's allowance.
//!
//! [`app`] builds the router from an [`AppState`]; `main` only reads [`Settings`], picks the
//! store and serves. Tests drive the same router over a real socket.

pub mod auth;
pub mod error;
pub mod field_error;
pub mod fleet;
pub mod metrics;
pub mod openapi;
pub mod probes;
pub mod routes;
pub mod settings;
pub mod status;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use wipgate_admission::wire::SyncReply;

use crate::fleet::SplitParams;

pub use crate::auth::AdminToken;
pub use crate::error::ApiError;
pub use crate::metrics::Metrics;
pub use crate::probes::{ProbeHub, ProbeMetrics};
pub use crate::settings::Settings;
pub use crate::store::{FleetStore, MemoryStore, RedisStore};

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The shared parts of [`AppState`].
pub struct Inner {
    /// Where the fleet's state lives.
    pub store: Arc<dyn FleetStore>,
    /// The admin token.
    pub token: AdminToken,
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
}

/// How often each replica checks the store for a policy whose probes differ from the ones
/// it runs (a change through another replica, or the Redis seed).
pub const PROBE_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// See [`Inner::last_replies`].
#[derive(Default)]
pub struct LastReplies {
    replies: HashMap<String, (SyncReply, Instant)>,
    sweep_at: usize,
}

impl LastReplies {
    /// Remembers `reply` as given now.
    pub fn insert(&mut self, reply: &SyncReply) {
        if self.replies.len() >= self.sweep_at {
            let now = Instant::now();
            self.replies.retain(|_, (r, at)| {
                now.duration_since(*at).as_millis() < u128::from(r.stale_after_ms)
            });
            self.sweep_at = self.replies.len() * 2 + 64;
        }
        self.replies
            .insert(reply.instance.clone(), (reply.clone(), Instant::now()));
    }

    /// The last reply to `instance`, marked degraded, with what is left of its validity;
    /// `None` when there is none or it has run out.
    pub fn degraded(&self, instance: &str) -> Option<SyncReply> {
        let (reply, at) = self.replies.get(instance)?;
        let age = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let left = reply.stale_after_ms.checked_sub(age).filter(|l| *l > 0)?;
        Some(SyncReply {
            degraded: true,
            stale_after_ms: left,
            ..reply.clone()
        })
    }
}

impl AppState {
    /// State around `store` with the knobs of `settings`.
    pub fn new(
        store: Arc<dyn FleetStore>,
        token: AdminToken,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::new()?;
        Ok(Self(Arc::new(Inner {
            store,
            token,
            params: SplitParams {
                floor_percent: settings.floor_percent,
                stale_after_ms: settings.stale_after_ms,
            },
            probes: ProbeHub::new(ProbeMetrics::register(metrics.registry())?),
            metrics,
            max_body_bytes: settings.max_body_bytes,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            draining: AtomicBool::new(false),
            last_replies: Mutex::new(LastReplies::default()),
        })))
    }

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

/// The whole API. Layers: request tracing, a time limit per request (503 past it), 413s
/// given a JSON body, per-route metrics; body size limits and admin auth sit on the routes.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let timeout = state.request_timeout;
    routes::router(&state)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(
            move |r: Response| async move { json_413(r, limit) },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// tower-http answers an over-long body with a plain-text 413; give it the API's JSON error.
fn json_413(response: Response, limit: usize) -> Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        ApiError::TooLarge(limit).into_response()
    } else {
        response
    }
}

/// Builds the store `settings` ask for. The Redis store is seeded from `--policy-file` in
/// the background (Redis may not be up yet); the memory store loads the file now.
pub fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn FleetStore>> {
    match &settings.redis_url {
        None => Ok(Arc::new(MemoryStore::open(settings.policy_file.clone())?)),
        Some(url) => {
            let store = Arc::new(RedisStore::new(
                url,
                &settings.redis_prefix,
                Duration::from_millis(settings.redis_timeout_ms),
            )?);
            if let Some(path) = &settings.policy_file {
                let bytes = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
                let policy = crate::fleet::FleetPolicy::parse(&bytes)
                    .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
                let seeding = Arc::clone(&store);
                tokio::spawn(async move {
                    loop {
                        match seeding.seed(policy.clone()).await {
                            Ok(true) => break tracing::info!("seeded Redis with the policy file"),
                            Ok(false) => {
                                break tracing::info!(
                                    "Redis already holds a policy; policy file not used"
                                )
                            }
                            Err(e) => tracing::warn!(error = %e, "seeding the policy: retrying"),
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
            Ok(store)
        }
    }
}
