//! Listeners: accepting connections (plain or TLS), serving HTTP/1.1 and HTTP/2 on them with
//! the configured limits, the admin listener, and graceful shutdown.

mod admin;
mod idle;
pub mod plain;
pub mod reload;
pub mod tls;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::config::{Config, LimitsConfig};
use crate::gate::{ConnInfo, Gate, GateError};
use crate::session::StoreHealth;
use admin::Admin;
use idle::{Activity, Tracked};
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
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl<H: Handler> Handler for Arc<H> {
    fn call(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        H::call(self, request, conn)
    }
}

impl Handler for Admin {
    async fn call(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
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
    let gate = Gate::new(config)?;
    let listener = bind("server.listen", config.server.listen).await?;
    start_with(config, gate, listener, |gate| gate).await
}

/// `start` on a main listener the caller bound, with `wrap` in front of the (reloadable)
/// gate: the demo binds a friendly port itself and adds its simulated-WeChat marker this
/// way, without a production setting for either.
pub async fn start_with<H: Handler>(
    config: &Config,
    gate: Gate,
    listener: TcpListener,
    wrap: impl FnOnce(Arc<LiveGate>) -> H,
) -> Result<Running, StartError> {
    let gate = Arc::new(LiveGate::new(gate));
    let cert = match &config.server.tls {
        Some(tls) => Some(LiveCert::load(tls)?),
        None => None,
    };
    let tls = match &cert {
        Some(cert) => Some(TlsAcceptor::from(tls::server_config(cert.clone())?)),
        None => None,
    };
    let metrics = gate.current().metrics().clone();
    let reloader = Arc::new(Reloader {
        gate: gate.clone(),
        cert,
        running: std::sync::Mutex::new(config.clone()),
    });
    // Reloads keep the session store (session.* changes need a restart): probe this one.
    let store = gate.current().session_store().cloned();
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
        drain: config.server.drain_timeout,
        shutdown: shutdown_rx,
    };
    let on_conn: ConnHook = Arc::new(move |opened| {
        if opened {
            metrics.connection_opened()
        } else {
            metrics.connection_closed()
        }
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

type ConnHook = Arc<dyn Fn(bool) + Send + Sync>;

type BoxedResponse =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

#[derive(Clone)]
struct Listen {
    limits: LimitsConfig,
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
    let builder = Arc::new(http_builder(&listen.limits));
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
            builder: builder.clone(),
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

fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers.max(1))
        // Room for the whole head; the exact header and URI limits are checked per request.
        .max_buf_size((limits.max_header_bytes + limits.max_uri_bytes + 1024).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

struct Conn<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
    limits: LimitsConfig,
    on_conn: Option<ConnHook>,
}

impl<H: Handler> Conn<H> {
    async fn run(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        worker: usize,
    ) {
        if let Some(hook) = &self.on_conn {
            hook(true);
        }
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
            worker,
        };
        match tls {
            None => self.http(stream, info).await,
            // Boxed: the TLS states (handshake, rustls connection) are several KiB, and unboxed
            // they would size the task of every plain connection too, for its whole life.
            Some(acceptor) => Box::pin(self.https(stream, info, acceptor)).await,
        }
        if let Some(hook) = &self.on_conn {
            hook(false);
        }
    }

    async fn https(&self, stream: TcpStream, info: ConnInfo, acceptor: TlsAcceptor) {
        let handshake =
            tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
        let peer = info.peer;
        match handshake.await {
            Ok(Ok(stream)) => self.http(stream, info).await,
            Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn http<I>(&self, io: I, info: ConnInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let io = TokioIo::new(Tracked::new(io, activity.clone()));
        let handler = self.handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            // Boxed: hyper keeps one slot the size of this future per connection for as long
            // as the connection lives, busy or idle; boxed, that slot is a pointer and the
            // request's state is freed when its response is sent.
            let respond: BoxedResponse =
                Box::pin(async move { Ok::<_, Infallible>(handler.call(request, info).await) });
            respond
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut shutdown = self.shutdown.clone();
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, peer = %info.peer, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = activity.idle_for(self.limits.idle_timeout), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
