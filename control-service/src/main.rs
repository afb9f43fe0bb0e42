//! `wipgate-control`: reads the settings, opens the store, serves until SIGTERM or Ctrl-C;
//! or, with a subcommand (`policy`, `status`), runs one operator command against a running
//! service (`cli`).

use std::time::Duration;

use clap::Parser;
use wipgate_control::cli::{self, Command};
use wipgate_control::settings::LogFormat;
use wipgate_control::{app, open_store_with_clock, AdminToken, AppState, Settings, SystemClock};

/// The service's flags, or an operator command.
#[derive(Debug, Parser)]
#[command(
    name = "wipgate-control",
    version,
    about = "wipgate's control service: fleet policy and allowances",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { settings, command } = Cli::parse();
    if let Some(command) = command {
        // One line, as a command-line tool says it (no Debug form, no backtrace).
        if let Err(e) = cli::run(command).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let token = settings.admin_token()?;
    if token.is_none() {
        tracing::warn!(
            "no admin token (WIPGATE_ADMIN_TOKEN or --admin-token-file): admin calls are refused"
        );
    }
    if settings.sync_token_file.is_none() {
        tracing::warn!(
            "no sync token (--sync-token-file): POST /v1/sync is open to anyone who reaches the service"
        );
    }
    let clock = SystemClock::shared();
    let store = open_store_with_clock(&settings, clock.clone())?;
    // A store that answers but must not be used (a Redis that can evict the fleet's keys)
    // stops the service at start; one that does not answer yet is waited for (readiness).
    if let Err(wipgate_control::store::StoreError::Internal(why)) = store.ping().await {
        anyhow::bail!("{why}");
    }
    let state = AppState::with_clock(store, AdminToken::new(token), &settings, clock)?;
    let _probes = state.start_probes();
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, store = state.store.kind(), "wipgate-control listening");
    let drain = state.clone();
    let delay = Duration::from_millis(settings.drain_delay_ms);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: draining");
            drain.start_draining();
            tokio::time::sleep(delay).await;
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "listening for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "listening for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
