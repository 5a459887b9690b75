//! Listeners: accepting connections (plain or TLS), serving HTTP/1.1 and HTTP/2 on them with
//! the configured limits, the admin listener, and graceful shutdown.

mod admin;
mod conn;
mod idle;
// The plain HTTP loop of the mock WeChat and the demo upstream, dev tools only.
#[cfg(feature = "dev-tools")]
pub mod plain;
pub mod reload;
mod rewind;
mod signals;
pub mod tls;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::http1::ClientBody;
use http::{Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::app::{self, Lasting};
use crate::body::Body;
use crate::config::{Config, LimitsConfig};
use crate::gate::{ConnInfo, Gate, GateError};
use crate::session::StoreHealth;
use admin::Admin;
use conn::{Conn, ConnEvent, ConnHook, Protocols};
use reload::{LiveCert, LiveGate, ReloadError, Reloader};
use workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error("server.workers: cannot start a worker thread: {0}")]
    Workers(std::io::Error),
}

/// Something that answers requests on a listener.
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        request: Request<ClientBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl<H: Handler> Handler for Arc<H> {
    fn call(
        &self,
        request: Request<ClientBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        H::call(self, request, conn)
    }
}

impl Handler for Admin {
    async fn call(&self, request: Request<ClientBody>, _conn: ConnInfo) -> Response<Body> {
        self.handle(&request).await
    }
}

/// A started gateway: its bound addresses and the way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    main: JoinHandle<()>,
    admin: JoinHandle<()>,
    reloader: Arc<Reloader>,
}

impl Running {
    /// Swaps in `config` (routes, upstreams, identity keys, TLS certificate) without dropping
    /// a request, or refuses it and keeps serving the running one.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.reloader.apply(config)
    }

    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), returns.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let _ = self.main.await;
        let _ = self.admin.await;
    }
}

/// Binds both listeners and starts serving; returns once they accept connections.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let lasting = Lasting::new(config);
    let gate = app::assemble(config, &lasting)?;
    let listener = bind("server.listen", config.server.listen).await?;
    start_with(config, (gate, lasting), listener, |gate| gate).await
}

/// `start` on a main listener the caller bound, with `wrap` in front of the (reloadable)
/// gate: the demo binds a friendly port itself and adds its simulated-WeChat marker this
/// way, without a production setting for either.
pub async fn start_with<H: Handler>(
    config: &Config,
    (gate, lasting): (Gate, Arc<Lasting>),
    listener: TcpListener,
    wrap: impl FnOnce(Arc<LiveGate>) -> H,
) -> Result<Running, StartError> {
    let gate = Arc::new(LiveGate::new(gate, lasting));
    let cert = match &config.server.tls {
        Some(tls) => Some(LiveCert::load(tls)?),
        None => None,
    };
    let tls = match &cert {
        Some(cert) => Some(TlsAcceptor::from(tls::server_config(cert.clone())?)),
        None => None,
    };
    let metrics = gate.lasting().metrics.clone();
    let reloader = Arc::new(Reloader {
        gate: gate.clone(),
        cert,
        running: std::sync::Mutex::new(config.clone()),
    });
    // Reloads keep the session store (session.* changes need a restart): probe this one.
    let store = gate.lasting().store();
    let handler = Arc::new(wrap(gate));
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let addr = local_addr("server.listen", &listener)?;
    let admin_addr = local_addr("admin.listen", &admin_listener)?;
    let ready = Arc::new(AtomicBool::new(true));
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        store: store.map(|store| StoreHealth::new(store, config.session.store_timeout)),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let listen = Listen {
        limits: config.server.limits.clone(),
        lane: config.server.http1_fast_paths,
        drain: config.server.drain_timeout,
        shutdown: shutdown_rx,
    };
    let on_conn: ConnHook = Arc::new(move |event| match event {
        ConnEvent::Opened => metrics.connection_opened(),
        ConnEvent::Closed => metrics.connection_closed(),
        ConnEvent::Parked => metrics.connection_parked(),
        ConnEvent::Resumed => metrics.connection_resumed(),
    });
    let workers = Workers::start(config.server.worker_count()).map_err(StartError::Workers)?;
    let main = tokio::spawn(serve(
        listener,
        tls,
        handler,
        listen.clone(),
        Some(on_conn),
        Some(workers),
    ));
    // The admin listener answers a scrape or a probe now and then: the accept loop's own
    // runtime serves it.
    let admin = tokio::spawn(serve(admin_listener, None, admin, listen, None, None));
    tracing::info!(%addr, %admin_addr, "wxgate listening");
    Ok(Running {
        addr,
        admin_addr,
        shutdown,
        ready,
        main,
        admin,
        reloader,
    })
}

/// How often the configuration file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Runs until SIGTERM or SIGINT, then drains and returns. With the file `config` came from,
/// SIGHUP or a change of the file reloads it.
pub async fn run(config: &Config, path: Option<&std::path::Path>) -> Result<(), StartError> {
    let running = start(config).await?;
    if let Some(path) = path {
        let path = path.to_path_buf();
        tokio::spawn(reload::watch_file(
            path.clone(),
            running.reloader(),
            WATCH_EVERY,
        ));
        tokio::spawn(reload_on_hangup(path, running.reloader()));
    }
    shutdown_signal().await;
    tracing::info!(drain = ?config.server.drain_timeout, "shutting down: draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn reload_on_hangup(path: std::path::PathBuf, reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be watched; reload by changing the file instead");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = reloader.reload_from(&path);
        }
    }
    #[cfg(not(unix))]
    let _ = (path, reloader);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        key,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

#[derive(Clone)]
struct Listen {
    limits: LimitsConfig,
    lane: bool,
    drain: Duration,
    shutdown: watch::Receiver<bool>,
}

/// Accepts until shutdown, then waits for open connections to finish (up to `drain`).
/// With `workers`, each connection is served on the next worker thread; without, on this
/// runtime.
async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    mut listen: Listen,
    on_conn: Option<ConnHook>,
    mut workers: Option<Workers>,
) {
    let slots = Arc::new(Semaphore::new(listen.limits.max_connections));
    let protocols = Arc::new(Protocols::new(&listen.limits, listen.lane));
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            _ = listen.shutdown.changed() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = listen.shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            protocols: protocols.clone(),
            handler: handler.clone(),
            shutdown: listen.shutdown.clone(),
            limits: listen.limits.clone(),
            on_conn: on_conn.clone(),
        };
        let tls = tls.clone();
        let alive = alive.clone();
        let Some(workers) = workers.as_mut() else {
            tokio::spawn(async move {
                conn.run(stream, peer, tls, 0).await;
                drop((permit, alive));
            });
            continue;
        };
        // The socket leaves this runtime's event loop and joins the worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "accepted connection unusable");
                continue;
            }
        };
        workers.dispatch(Box::new(move |worker| {
            tokio::spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => conn.run(stream, peer, tls, worker).await,
                    Err(e) => tracing::debug!(error = %e, %peer, "accepted connection unusable"),
                }
                drop((permit, alive));
            });
        }));
    }
    drop(listener);
    drop(alive);
    if tokio::time::timeout(listen.drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with connections still open");
    }
    if let Some(workers) = workers {
        workers.stop().await;
    }
}
