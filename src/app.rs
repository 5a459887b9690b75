//! The assembly: what the gateway is built from, in one place. [`Lasting`] holds what lives
//! as long as the process, whatever the configuration becomes: metrics, the session store
//! and its cache, and the logins' ledger (single flights, used states, rate limits).
//! [`assemble`] builds a gate from a configuration over it: the routes, the proxy, the
//! logins' shared part and each account's login, the JS-SDK. A reload assembles again over
//! the same `Lasting`, so it swaps only what the configuration derives and logs nobody out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::gate::{Gate, GateError};
use crate::jssdk::Jssdk;
use crate::login::Logins;
use crate::login::ledger::LoginLedger;
use crate::metrics::{LoginMetrics, MeteredStore, Metrics};
use crate::proxy::Proxy;
use crate::route::RouteTable;
use crate::session::{SessionCache, SessionStore, StoreOpenError};

pub struct Lasting {
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<LoginLedger>,
    /// Opened when a configuration first needs it; kept from then on (`session.*` needs a
    /// restart to change).
    sessions: Mutex<Option<Arc<SessionCache>>>,
}

impl Lasting {
    /// For the configuration the gateway starts with.
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Lasting {
            metrics: Metrics::new(),
            ledger: Arc::new(LoginLedger::new(&config.server.limits)),
            sessions: Mutex::new(None),
        })
    }

    /// The sessions, opened from `config` the first time they are asked for.
    pub fn sessions(&self, config: &Config) -> Result<Arc<SessionCache>, StoreOpenError> {
        let mut sessions = self.lock();
        if let Some(open) = sessions.as_ref() {
            return Ok(open.clone());
        }
        let opened = open_sessions(config, &self.metrics)?;
        *sessions = Some(opened.clone());
        Ok(opened)
    }

    /// The session store, once some configuration has opened it: `/readyz` probes it.
    pub fn store(&self) -> Option<Arc<dyn SessionStore>> {
        self.lock()
            .as_ref()
            .map(|sessions| sessions.store().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<SessionCache>>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Builds the gate `config` describes over what lasts.
pub fn assemble(config: &Config, lasting: &Lasting) -> Result<Gate, GateError> {
    let routes = RouteTable::from_config(config)?;
    let logins = Logins::build(config, lasting)?;
    let metrics = lasting.metrics.clone();
    // The JS-SDK's shared ticket lives in the same store as the sessions.
    let jssdk = if Jssdk::wanted(config) {
        let store = lasting.sessions(config).map_err(GateError::Store)?;
        Jssdk::build(config, &metrics, store.store().clone())?
    } else {
        None
    };
    Ok(Gate {
        proxy: Proxy::new(
            &config.upstream,
            config.server.worker_count(),
            config.server.http1_fast_paths,
        ),
        route_metrics: metrics.for_routes(&routes),
        metrics,
        routes,
        limits: config.server.limits.clone(),
        trusted_proxies: config.server.trusted_proxies.clone(),
        access_log: config.log.access_log,
        logins,
        identity_header: config.identity.header.clone(),
        websocket_origins: config
            .server
            .public_url
            .iter()
            .chain(&config.server.websocket_origins)
            .map(url::Url::origin)
            .collect(),
        jssdk,
    })
}

/// The configured store behind its metrics and hot-path cache.
fn open_sessions(
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<SessionCache>, crate::session::StoreOpenError> {
    let store = crate::session::open_store(&config.session)?;
    let store: Arc<dyn SessionStore> = Arc::new(MeteredStore::new(store, metrics.store.clone()));
    let sessions = Arc::new(SessionCache::new(
        store,
        crate::session::cache_settings(&config.session),
        crate::session::lifetimes(&config.session),
    ));
    sample_session_count(&sessions, metrics.login.clone());
    Ok(sessions)
}

/// Keeps `wxgate_sessions_active` current: a count at start, then every 15 seconds for as
/// long as the sessions live (the task holds only a weak reference).
fn sample_session_count(sessions: &Arc<SessionCache>, metrics: LoginMetrics) {
    const EVERY: Duration = Duration::from_secs(15);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let sessions = Arc::downgrade(sessions);
    runtime.spawn(async move {
        loop {
            let Some(live) = sessions.upgrade() else {
                return;
            };
            match live.store().count().await {
                Ok(count) => metrics.set_sessions_active(count),
                Err(e) => tracing::debug!(error = %e, "session count unavailable"),
            }
            drop(live);
            tokio::time::sleep(EVERY).await;
        }
    });
}
