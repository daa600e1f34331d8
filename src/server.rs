//! `callguard serve`: wires config, store sync, engine and the FastAGI listener; drives shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agi::codec::Limits;
use crate::agi::session::{self, AgiContext, SessionSettings};
use crate::config::{Config, OnBlock};
use crate::engine::{Engine, EngineSettings};
use crate::esl::inbound::{self, InboundSettings};
use crate::esl::outbound::{self, EslSessionSettings};
use crate::flood::{FloodDetector, SharedDetector};
use crate::http::{HttpState, Readiness};
use crate::lastcall::LastCallers;
use crate::snapshot::SnapshotHandle;
use crate::store::sync::{self, SyncOptions};
use crate::store::{Store, StoreError, StoreLocation};

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(crate::metrics::MetricsError),
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs until SIGINT/SIGTERM or `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let normalizer = config.normalizer()?;
    // Before the sync task starts, so its first store_up is recorded.
    let metrics_handle = crate::metrics::install().map_err(ServeError::Metrics)?;
    crate::metrics::started(std::time::SystemTime::now());
    crate::metrics::tenants().set_cap(config.metrics.tenant_cap);
    let did_tenants = config.did_tenants()?;
    crate::metrics::tenants().admit(did_tenants.values().map(|t| t.as_str()));
    let location = config.store_location();
    let store = Store::open(&location, &config.redis, normalizer.clone()).await?;
    let snapshot = SnapshotHandle::new();
    let options = SyncOptions {
        poll_interval: Duration::from_millis(match location {
            StoreLocation::Local(_) => config.local.poll_interval_ms,
            StoreLocation::Redis(_) => config.redis.poll_interval_ms,
        }),
        full_resync_interval: Duration::from_millis(config.redis.full_resync_interval_ms),
        configure_notifications: config.redis.configure_notifications,
        max_backoff: Duration::from_millis(config.redis.max_backoff_ms),
        time_zone: config.time_zone()?,
        snapshot_file: Some(config.redis.snapshot_file.trim())
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
        snapshot_file_interval: Duration::from_millis(config.redis.snapshot_file_interval_ms),
    };
    let sync_task = tokio::spawn(sync::run(
        store.clone(),
        snapshot.clone(),
        options,
        shutdown.clone(),
    ));

    let engine = Engine::new(
        snapshot.clone(),
        normalizer,
        EngineSettings {
            default_action: config.default_action()?,
            did_tenants: Arc::new(did_tenants),
            attack_policy: config.flood.target.policy,
        },
    );
    let engine = if config.call_log.enabled {
        let sink = config.call_log_sink(&store);
        engine.with_call_log(crate::calllog::start(
            sink,
            config.call_log.settings(),
            shutdown.clone(),
        ))
    } else {
        engine
    };
    let engine = if config.flood.enabled {
        let detector = SharedDetector::new(FloodDetector::new(config.flood.settings()?));
        engine.with_flood(crate::bans::start(
            detector,
            store.clone(),
            config.normalizer()?,
            snapshot.clone(),
            config.flood.shared.then(|| {
                config
                    .flood
                    .ranges
                    .iter()
                    .map(|r| r.suffix_digits)
                    .collect()
            }),
            shutdown.clone(),
        ))
    } else {
        engine
    };
    let esl_engine = engine.clone();
    if let Some(addr) = config.esl_inbound.connect_addr() {
        let inbound_settings = InboundSettings {
            addr: addr.to_owned(),
            password: config.esl_inbound.password.clone(),
            event: config.esl_inbound.event.clone(),
            continue_context: config.esl_inbound.continue_context.clone(),
            act_on_block: config.esl_inbound.on_block == OnBlock::Hangup,
            reply_timeout: Duration::from_millis(config.esl_inbound.reply_timeout_ms),
            max_backoff: Duration::from_millis(config.esl_inbound.max_backoff_ms),
            limits: crate::esl::codec::Limits::default(),
        };
        tokio::spawn(inbound::run(
            engine.clone(),
            inbound_settings,
            shutdown.clone(),
        ));
    }
    let context = AgiContext {
        engine,
        last_callers: LastCallers::default(),
        store,
    };
    let bind = |addr: String| async move {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok::<_, ServeError>((listener, local))
    };
    let (agi_listener, agi_local) = bind(config.agi.listen.clone()).await?;
    let esl = match config.esl.listen_addr() {
        Some(addr) => Some(bind(addr.to_owned()).await?),
        None => None,
    };
    let esl_shown = esl
        .as_ref()
        .map_or_else(|| "off".to_owned(), |(_, local)| local.to_string());
    let metrics_listener = match config.metrics.listen_addr() {
        Some(addr) => Some(bind(addr.to_owned()).await?),
        None => None,
    };
    let metrics_shown = metrics_listener
        .as_ref()
        .map_or_else(|| "off".to_owned(), |(_, local)| local.to_string());
    info!(
        agi = %agi_local,
        esl = %esl_shown,
        metrics = %metrics_shown,
        store = %crate::store::redacted(&config.store),
        "callguard listening"
    );
    // Its own token: /metrics and /readyz keep answering while calls drain.
    let metrics_stop = CancellationToken::new();
    let metrics_task = metrics_listener.map(|(listener, _)| {
        let ready_snapshot = snapshot.clone();
        let state = HttpState::new(metrics_handle, move || {
            if ready_snapshot.is_ready() {
                Readiness::Ready
            } else {
                Readiness::NotReady("no snapshot loaded yet".into())
            }
        });
        tokio::spawn(crate::http::serve(listener, state, metrics_stop.clone()))
    });

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        signals.cancel();
    });

    let settings = SessionSettings {
        read_timeout: Duration::from_millis(config.agi.read_timeout_ms),
        reply_timeout: Duration::from_millis(config.agi.reply_timeout_ms),
        limits: Limits {
            max_line: config.agi.max_line_bytes,
            ..Limits::default()
        },
        act_on_block: config.agi.on_block == OnBlock::Hangup,
    };
    let agi = crate::listener::serve(
        agi_listener,
        config.agi.max_connections,
        Duration::from_secs(5),
        shutdown.clone(),
        move |stream, peer| session::run(stream, peer, context.clone(), settings),
    );
    let esl_settings = EslSessionSettings {
        read_timeout: Duration::from_millis(config.esl.read_timeout_ms),
        reply_timeout: Duration::from_millis(config.esl.reply_timeout_ms),
        execute_timeout: Duration::from_millis(config.esl.execute_timeout_ms),
        playback_timeout: Duration::from_millis(config.esl.playback_timeout_ms),
        limits: crate::esl::codec::Limits::default(),
        act_on_block: config.esl.on_block == OnBlock::Hangup,
    };
    let esl_max = config.esl.max_connections;
    let esl_shutdown = shutdown.clone();
    let esl = async move {
        if let Some((listener, _)) = esl {
            crate::listener::serve(
                listener,
                esl_max,
                Duration::from_secs(5),
                esl_shutdown,
                move |stream, peer| outbound::run(stream, peer, esl_engine.clone(), esl_settings),
            )
            .await;
        }
    };
    tokio::join!(agi, esl);
    if let Err(e) = sync_task.await {
        warn!(error = %e, "store sync task failed");
    }
    metrics_stop.cancel();
    if let Some(task) = metrics_task
        && let Err(e) = task.await
    {
        warn!(error = %e, "metrics listener failed");
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ctrl_c = tokio::signal::ctrl_c().await;
        }
    }
}
