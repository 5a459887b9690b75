//! Reloading the configuration without downtime. The running gate and TLS certificate sit
//! behind atomic pointers: a reload builds a complete new gate (routes, upstreams, identity
//! keys, login) and certificate first, then swaps them in one step. Requests already inside
//! the old gate finish on it; the next request sees the new one. A configuration that does
//! not load, validate or build is refused and the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::http1::ClientBody;
use arc_swap::ArcSwap;
use http::{Request, Response};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Handler;
use super::tls::{self, TlsError};
use crate::app::{self, Lasting};
use crate::body::Body;
use crate::config::{self, Config};
use crate::gate::{ConnInfo, Gate, GateError};

/// Why a new configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("{key}: changing it needs a restart; the running configuration is kept")]
    NeedsRestart { key: &'static str },
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The gate requests go through now, and what every gate it becomes is built over.
pub struct LiveGate {
    current: ArcSwap<Gate>,
    lasting: Arc<Lasting>,
}

impl LiveGate {
    /// `gate` was assembled over `lasting`.
    pub fn new(gate: Gate, lasting: Arc<Lasting>) -> Self {
        LiveGate {
            current: ArcSwap::from_pointee(gate),
            lasting,
        }
    }

    /// What outlives every configuration: metrics, sessions, the logins' ledger.
    pub fn lasting(&self) -> &Arc<Lasting> {
        &self.lasting
    }

    pub fn current(&self) -> Arc<Gate> {
        self.current.load_full()
    }

    fn swap(&self, gate: Gate) {
        self.current.store(Arc::new(gate));
    }
}

impl Handler for LiveGate {
    async fn call(&self, request: Request<ClientBody>, conn: ConnInfo) -> Response<Body> {
        // Held for the whole request: a reload meanwhile does not pull the gate from under it.
        let gate = self.current.load_full();
        gate.handle(request, conn).await
    }
}

/// The certificate the TLS listener presents now.
#[derive(Debug)]
pub struct LiveCert {
    current: ArcSwap<CertifiedKey>,
}

impl LiveCert {
    pub fn load(tls: &config::TlsConfig) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(LiveCert {
            current: ArcSwap::new(tls::certified_key(tls)?),
        }))
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What a reload swaps.
pub struct Reloader {
    pub(super) gate: Arc<LiveGate>,
    pub(super) cert: Option<Arc<LiveCert>>,
    /// The configuration now serving, to compare the next one with.
    pub(super) running: std::sync::Mutex<Config>,
}

impl Reloader {
    /// The configuration serving now.
    pub fn running_config(&self) -> Config {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Builds everything from `next` and swaps it in, or changes nothing; logs and counts
    /// the result either way.
    pub fn apply(&self, next: Config) -> Result<(), ReloadError> {
        let result = self.swap_in(next);
        self.report(&result);
        result
    }

    /// Loads `path` (with the environment) and applies it.
    pub fn reload_from(&self, path: &Path) -> Result<(), ReloadError> {
        match config::load(path) {
            Ok(next) => self.apply(next),
            Err(e) => {
                let result = Err(ReloadError::from(e));
                self.report(&result);
                result
            }
        }
    }

    fn swap_in(&self, next: Config) -> Result<(), ReloadError> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(key) = restart_only_change(&running, &next) {
            return Err(ReloadError::NeedsRestart { key });
        }
        // Over the same lasting part: a reload logs nobody out.
        let gate = app::assemble(&next, &self.gate.lasting)?;
        let cert = match (&self.cert, &next.server.tls) {
            (Some(_), Some(tls)) => Some(tls::certified_key(tls)?),
            _ => None,
        };
        // Everything is built: from here on nothing can fail, so the swap is all or nothing.
        self.gate.swap(gate);
        if let (Some(live), Some(cert)) = (&self.cert, cert) {
            live.current.store(cert);
        }
        *running = next;
        Ok(())
    }

    fn report(&self, result: &Result<(), ReloadError>) {
        let metrics = &self.gate.lasting.metrics;
        match result {
            Ok(()) => {
                metrics.reloaded("ok");
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                metrics.reloaded("refused");
                tracing::error!(error = %e, "configuration reload refused; the running configuration is kept");
            }
        }
    }
}

/// The first key whose change a reload cannot apply: listeners are bound, the session store
/// holds every visitor's session (and `session.secret` keys their cookies), and the limits
/// and workers size the accept loop.
fn restart_only_change(running: &Config, next: &Config) -> Option<&'static str> {
    let (r, n) = (&running.server, &next.server);
    [
        ("server.listen", r.listen == n.listen),
        ("admin.listen", running.admin.listen == next.admin.listen),
        ("server.tls", r.tls.is_some() == n.tls.is_some()),
        ("server.limits", r.limits == n.limits),
        ("server.drain_timeout", r.drain_timeout == n.drain_timeout),
        ("server.workers", r.workers == n.workers),
        ("session", running.session == next.session),
    ]
    .into_iter()
    .find_map(|(key, unchanged)| (!unchanged).then_some(key))
}

/// Watches the configuration file: a change of its contents triggers a reload, like SIGHUP.
/// Polling the contents (not only the mtime) also sees the atomic rename a ConfigMap update
/// or an editor's save makes.
pub async fn watch_file(path: PathBuf, reloader: Arc<Reloader>, every: Duration) {
    let mut seen = fingerprint(&path);
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&path);
        if now != seen && now.is_some() {
            seen = now;
            let _ = reloader.reload_from(&path);
        }
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, Vec<u8>)> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let contents = std::fs::read(path).ok()?;
    Some((modified, contents))
}
