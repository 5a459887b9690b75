//! Keep-alive connections to upstreams, one set per worker thread.
//!
//! Why not hyper-util's pooled client: it keeps every idle connection behind one mutex that
//! all requests take twice, hashes its (scheme, authority) key with SipHash three times a
//! request, builds a connect future per request even when an idle connection is there, and
//! spawns a task per response to return the connection once it is ready again. Here a
//! connection is borrowed from its worker's own shard (an uncontended lock, the upstream's
//! number as index), and goes back when the response body has been read to its end, on the
//! same thread whose event loop drives it.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;

use super::UpstreamBody;
use crate::config::UpstreamConfig;
use crate::route::Upstream;

type Sender = SendRequest<UpstreamBody>;

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, TLS failed, connect timeout).
    #[error("cannot connect to the upstream: {0}")]
    Connect(Box<dyn StdError + Send + Sync>),
    /// The connection broke or the upstream answered with something that is not HTTP.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    max_idle: usize,
    shards: Box<[Mutex<Shard>]>,
}

/// One worker's idle connections, by upstream number (`Upstream::id`), newest last.
#[derive(Default)]
struct Shard {
    by_upstream: Vec<Vec<Idle>>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Where a borrowed connection goes back to. Small, as it travels with every response body.
struct Home {
    pool: Arc<Pool>,
    shard: u32,
    upstream: u32,
}

impl Pool {
    /// `shards`: one per worker thread; connections stay with the worker that opened them.
    pub fn new(config: &UpstreamConfig, shards: usize) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Arc::new(Self {
            connector,
            idle_timeout: config.pool_idle_timeout,
            max_idle: config.pool_max_idle,
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
        })
    }

    /// Sends `request` (origin-form URI) to `upstream` on an idle connection of `worker`'s
    /// shard, or on a new one. A request an idle connection turned out unable to take (the
    /// upstream closed it meanwhile) is sent again on a new connection: it was never
    /// written, so even a POST is safe to resend.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Upstream,
        worker: usize,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let home = Home {
            pool: self.clone(),
            shard: u32::try_from(worker % self.shards.len()).unwrap_or(0),
            upstream: u32::try_from(upstream.id).unwrap_or(u32::MAX),
        };
        // `loop` and `let else`, not `while let`: the checkout future would live through the
        // loop's body, beside the send's, in this future's state.
        loop {
            let Some(mut sender) = self.checkout(&home).await else {
                break;
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(home.lend(sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: opening a connection (TCP, TLS, handshake) is the rare path, and its future
        // would otherwise size every request's.
        let mut sender = Box::pin(self.connect(upstream)).await?;
        let response = sender.send_request(request).await?;
        Ok(home.lend(sender, response))
    }

    /// The newest idle connection of the shard that is ready for a request. A connection
    /// returned a moment ago may still be finishing its last response: waiting for it takes
    /// microseconds, and it either becomes ready or turns out closed.
    async fn checkout(&self, home: &Home) -> Option<Sender> {
        loop {
            let idle = {
                let mut shard = self.shard(home.shard);
                let list = shard.by_upstream.get_mut(home.upstream as usize)?;
                let idle = list.pop()?;
                if idle.since.elapsed() > self.idle_timeout {
                    // The newest is past the idle timeout: so is every older one.
                    list.clear();
                    return None;
                }
                idle
            };
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, home: &Home, sender: Sender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(home.shard);
        let index = home.upstream as usize;
        if shard.by_upstream.len() <= index {
            shard.by_upstream.resize_with(index + 1, Vec::new);
        }
        let list = &mut shard.by_upstream[index];
        // Oldest first: drop those past the idle timeout, then make room under the cap.
        let stale = list.partition_point(|idle| now - idle.since > self.idle_timeout);
        list.drain(..stale);
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Idle { sender, since: now });
    }

    fn shard(&self, index: u32) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave it inconsistent (a Vec push or pop).
        self.shards[index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn connect(&self, upstream: &Upstream) -> Result<Sender, SendError> {
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        // The connection runs as a task of the worker that opened it, the same worker whose
        // requests will borrow it.
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Home {
    fn lend(self, sender: Sender, response: Response<Incoming>) -> Response<PooledBody> {
        // A connection that switched protocols belongs to the tunnel from now on.
        let lease = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then_some(Lease { home: self, sender });
        response.map(|body| PooledBody { body, lease })
    }
}

struct Lease {
    home: Home,
    sender: Sender,
}

impl Lease {
    fn release(self) {
        self.home.pool.checkin(&self.home, self.sender);
    }
}

/// An upstream's response body; its connection goes back to the pool once the body has
/// been read to its end. Dropped before that, the connection is closed, as it must be: the
/// rest of the body would otherwise be read as the next response.
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    /// Hands the connection back, once.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    fn release_if_done(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // A chunked body's end is known only here: `is_end_stream` never says so.
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, 304, HEAD, `Content-Length: 0`) is never polled.
        self.release_if_done();
    }
}
