//! `callguard serve`: wires config, store sync, engine and the FastAGI listener; drives shutdown.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agi::codec::Limits;
use crate::agi::session::{self, AgiContext, SessionSettings};
use crate::config::{Config, ConfigError, OnBlock};
use crate::engine::Engine;
use crate::esl::inbound::{self, InboundSettings};
use crate::esl::outbound::{self, EslSessionSettings};
use crate::flood::{FloodDetector, SharedDetector};
use crate::http::{HttpState, Readiness};
use crate::lastcall::LastCallers;
use crate::listener::{ListenerPolicy, SharedPolicy};
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

/// How long sessions in flight get to finish after SIGTERM before they are dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// What SIGHUP does: where the config is read again from, and how the log filter changes.
pub struct Reloader {
    /// Reads and validates the config again (same file, environment and flags).
    pub load: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
    /// Applies a new `log_level`; an error names what is wrong with it.
    pub set_log_level: crate::cli::SetLogLevel,
}

/// Runs until SIGINT/SIGTERM or `shutdown` is cancelled; SIGHUP is logged and ignored (no
/// config source to reload from: see [`serve_with_reload`]).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    serve_with_reload(config, shutdown, None).await
}

/// [`serve`], with SIGHUP reloading the config through `reloader`.
pub async fn serve_with_reload(
    config: Config,
    shutdown: CancellationToken,
    reloader: Option<Reloader>,
) -> Result<(), ServeError> {
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

    let engine = Engine::new(snapshot.clone(), normalizer, config.engine_settings()?);
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
            limits: config.esl.limits(),
        };
        tokio::spawn(inbound::run(
            engine.clone(),
            inbound_settings,
            shutdown.clone(),
        ));
    }
    let live = Arc::new(Live {
        engine: engine.clone(),
        api_policy: crate::listener::shared(api_policy(&config)?),
        api_tokens: Arc::new(ArcSwap::from_pointee(config.api_tokens()?)),
        agi_policy: crate::listener::shared(agi_policy(&config)?),
        esl_policy: crate::listener::shared(esl_policy(&config)?),
        metrics_policy: crate::listener::shared(metrics_policy(&config)?),
        agi_settings: Arc::new(ArcSwap::from_pointee(agi_settings(&config))),
        esl_settings: Arc::new(ArcSwap::from_pointee(esl_settings(&config))),
        running: Mutex::new(config.clone()),
    });
    let api_state = crate::api::ApiState {
        store: store.clone(),
        snapshot: snapshot.clone(),
        engine: engine.clone(),
        tokens: live.api_tokens.clone(),
        call_log: config
            .call_log
            .enabled
            .then(|| config.call_log_sink(&store)),
        call_log_keep_files: config.call_log.keep_files,
        max_body_bytes: config.api.max_body_bytes,
    };
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
    let api_listener = match config.api.listen_addr() {
        Some(addr) => Some(bind(addr.to_owned()).await?),
        None => None,
    };
    let api_shown = api_listener
        .as_ref()
        .map_or_else(|| "off".to_owned(), |(_, local)| local.to_string());
    if api_listener.is_some() && live.api_tokens.load().is_empty() {
        warn!("api is listening but [[api.tokens]] is empty: every request gets 401");
    }
    info!(
        agi = %agi_local,
        esl = %esl_shown,
        metrics = %metrics_shown,
        api = %api_shown,
        store = %crate::store::redacted(&config.store),
        "callguard listening"
    );
    // Its own token: /metrics and /readyz keep answering while calls drain.
    let metrics_stop = CancellationToken::new();
    let metrics_policy = live.metrics_policy.clone();
    let metrics_task = metrics_listener.map(|(listener, _)| {
        let ready_snapshot = snapshot.clone();
        let state = HttpState::new(metrics_handle, move || {
            let store = match crate::metrics::store_is_up() {
                Some(true) => "up",
                Some(false) => "down (deciding from the last snapshot)",
                None => "not contacted yet",
            };
            if ready_snapshot.is_ready() {
                let age = crate::metrics::snapshot_age(std::time::SystemTime::now())
                    .map_or_else(|| "unknown".to_owned(), |a| format!("{}s", a.as_secs()));
                let snapshot = ready_snapshot.load();
                Readiness::Ready(format!(
                    "snapshot: version {}, {} block and {} allow rules, confirmed {age} ago\n\
                     store: {store}\n",
                    snapshot.version(),
                    snapshot.len(crate::rules::ListKind::Block),
                    snapshot.len(crate::rules::ListKind::Allow),
                ))
            } else {
                Readiness::NotReady(format!("no snapshot loaded yet; store: {store}"))
            }
        });
        tokio::spawn(crate::http::serve(
            listener,
            state,
            metrics_policy,
            metrics_stop.clone(),
        ))
    });

    // Stops with the PBX listeners: an edit arriving during shutdown is refused, not half done.
    let api_task = api_listener.map(|(listener, _)| {
        tokio::spawn(crate::api::serve(
            listener,
            api_state,
            live.api_policy.clone(),
            shutdown.clone(),
        ))
    });

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: no new calls; draining calls in flight");
        signals.cancel();
    });
    tokio::spawn(reload_on_sighup(live.clone(), reloader, shutdown.clone()));

    let agi_settings = live.agi_settings.clone();
    let agi = crate::listener::serve(
        agi_listener,
        "agi",
        live.agi_policy.clone(),
        DRAIN_GRACE,
        shutdown.clone(),
        move |stream, peer| session::run(stream, peer, context.clone(), **agi_settings.load()),
    );
    let esl_settings = live.esl_settings.clone();
    let esl_policy = live.esl_policy.clone();
    let esl_shutdown = shutdown.clone();
    let esl = async move {
        if let Some((listener, _)) = esl {
            crate::listener::serve(
                listener,
                "esl",
                esl_policy,
                DRAIN_GRACE,
                esl_shutdown,
                move |stream, peer| {
                    outbound::run(stream, peer, esl_engine.clone(), **esl_settings.load())
                },
            )
            .await;
        }
    };
    tokio::join!(agi, esl);
    if let Some(task) = api_task
        && let Err(e) = task.await
    {
        warn!(error = %e, "api listener failed");
    }
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

/// What a config reload can change while calls go on; everything else needs a restart.
struct Live {
    engine: Engine,
    agi_policy: SharedPolicy,
    esl_policy: SharedPolicy,
    metrics_policy: SharedPolicy,
    api_policy: SharedPolicy,
    api_tokens: crate::api::SharedTokens,
    agi_settings: Arc<ArcSwap<SessionSettings>>,
    esl_settings: Arc<ArcSwap<EslSessionSettings>>,
    // The config the process runs with, for telling what a reload changed.
    running: Mutex<Config>,
}

impl Live {
    /// Applies `new` whole, or nothing of it when any part is invalid. Returns the changed
    /// keys that only take effect after a restart.
    fn apply(&self, new: Config) -> Result<Vec<&'static str>, ConfigError> {
        // Everything fallible first, so a bad value leaves the running config untouched.
        let engine = new.engine_settings()?;
        let agi = agi_policy(&new)?;
        let esl = esl_policy(&new)?;
        let metrics = metrics_policy(&new)?;
        let api = api_policy(&new)?;
        let tokens = new.api_tokens()?;
        self.engine.reconfigure(engine);
        self.api_policy.store(Arc::new(api));
        self.api_tokens.store(Arc::new(tokens));
        self.agi_policy.store(Arc::new(agi));
        self.esl_policy.store(Arc::new(esl));
        self.metrics_policy.store(Arc::new(metrics));
        self.agi_settings.store(Arc::new(agi_settings(&new)));
        self.esl_settings.store(Arc::new(esl_settings(&new)));
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let restart = needs_restart(&running, &new);
        *running = new;
        Ok(restart)
    }
}

/// Keys whose change a reload cannot apply: listeners, the store and what was built from it.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let mut flood_old = old.flood.clone();
    // The attack policy is a decision setting: reloaded.
    flood_old.target.policy = new.flood.target.policy;
    [
        ("store", differs(&old.store, &new.store)),
        (
            "default_country",
            old.default_country != new.default_country,
        ),
        (
            "numbering_plans",
            old.numbering_plans != new.numbering_plans,
        ),
        (
            "rules.time_zone",
            old.rules.time_zone != new.rules.time_zone,
        ),
        ("agi.listen", old.agi.listen != new.agi.listen),
        ("esl.listen", old.esl.listen != new.esl.listen),
        ("esl_inbound", differs(&old.esl_inbound, &new.esl_inbound)),
        ("metrics.listen", old.metrics.listen != new.metrics.listen),
        ("api.listen", old.api.listen != new.api.listen),
        (
            "api.max_body_bytes",
            old.api.max_body_bytes != new.api.max_body_bytes,
        ),
        (
            "metrics.tenant_cap",
            old.metrics.tenant_cap != new.metrics.tenant_cap,
        ),
        ("call_log", differs(&old.call_log, &new.call_log)),
        ("flood", differs(&flood_old, &new.flood)),
        ("redis", differs(&old.redis, &new.redis)),
        ("local", differs(&old.local, &new.local)),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

fn agi_policy(config: &Config) -> Result<ListenerPolicy, ConfigError> {
    Ok(ListenerPolicy {
        max_connections: config.agi.max_connections,
        allow: config.agi_allow()?,
    })
}

fn esl_policy(config: &Config) -> Result<ListenerPolicy, ConfigError> {
    Ok(ListenerPolicy {
        max_connections: config.esl.max_connections,
        allow: config.esl_allow()?,
    })
}

fn metrics_policy(config: &Config) -> Result<ListenerPolicy, ConfigError> {
    Ok(ListenerPolicy {
        max_connections: crate::http::MAX_CONNECTIONS,
        allow: config.metrics_allow()?,
    })
}

fn api_policy(config: &Config) -> Result<ListenerPolicy, ConfigError> {
    Ok(ListenerPolicy {
        max_connections: config.api.max_connections,
        allow: config.api_allow()?,
    })
}

fn agi_settings(config: &Config) -> SessionSettings {
    SessionSettings {
        read_timeout: Duration::from_millis(config.agi.read_timeout_ms),
        reply_timeout: Duration::from_millis(config.agi.reply_timeout_ms),
        limits: Limits {
            max_line: config.agi.max_line_bytes,
            max_env_bytes: config.agi.max_env_bytes,
            ..Limits::default()
        },
        act_on_block: config.agi.on_block == OnBlock::Hangup,
    }
}

fn esl_settings(config: &Config) -> EslSessionSettings {
    EslSessionSettings {
        read_timeout: Duration::from_millis(config.esl.read_timeout_ms),
        reply_timeout: Duration::from_millis(config.esl.reply_timeout_ms),
        execute_timeout: Duration::from_millis(config.esl.execute_timeout_ms),
        playback_timeout: Duration::from_millis(config.esl.playback_timeout_ms),
        limits: config.esl.limits(),
        act_on_block: config.esl.on_block == OnBlock::Hangup,
    }
}

/// Reloads the config on every SIGHUP until shutdown. A config that does not load keeps the
/// running one, and the log says why.
async fn reload_on_sighup(
    live: Arc<Live>,
    reloader: Option<Reloader>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP; config reload is off");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        let Some(reloader) = &reloader else {
            warn!("SIGHUP ignored: this server was started without a config source");
            continue;
        };
        let loaded = (reloader.load)();
        let new = match loaded {
            Ok(new) => new,
            Err(e) => {
                crate::metrics::config_reload("error");
                error!(error = %e, "config reload failed; keeping the running config");
                continue;
            }
        };
        let log_level = new.log_level.clone();
        match live.apply(new) {
            Ok(restart) => {
                if let Err(e) = (reloader.set_log_level)(&log_level) {
                    warn!(error = %e, "log_level not applied; keeping the old one");
                }
                crate::metrics::config_reload("ok");
                if restart.is_empty() {
                    info!("config reloaded");
                } else {
                    warn!(
                        keys = %restart.join(", "),
                        "config reloaded; these changes take effect only after a restart"
                    );
                }
            }
            Err(e) => {
                crate::metrics::config_reload("error");
                error!(error = %e, "config reload failed; keeping the running config");
            }
        }
    }
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
