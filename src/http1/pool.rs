//! Keep-alive connections to upstreams, one set per worker thread.
//!
//! Why not hyper-util's pooled client: it keeps every idle connection behind one mutex that
//! all requests take twice, hashes its (scheme, authority) key with SipHash three times a
//! request, builds a connect future per request even when an idle connection is there, and
//! spawns a task per response to return the connection once it is ready again. Here a
//! connection is borrowed from its worker's own shard (an uncontended lock, the upstream's
//! number as index), and goes back when the response body has been read to its end, on the
//! same thread whose event loop drives it.
//!
//! A request without a body goes over a `Wire` (`wire.rs`), driven by the request's own
//! task; one with a body (`framing::request_has_body`), or one that asks to switch
//! protocols, over hyper's client. Each kind keeps its own idle connections.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower_service::Service;

use super::ClientBody;
use super::framing::{Declared, request_has_body};
use super::hop;
use super::wire::{self, Answer, Io, Wire, WireBody, WireError};
use crate::config::UpstreamConfig;
use crate::route::Upstream;

type Sender = SendRequest<UpstreamBody>;

/// The body sent upstream: the client's, cut off at `server.limits.max_body_bytes`.
pub type UpstreamBody = Limited<ClientBody>;

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, TLS failed, connect timeout).
    #[error("cannot connect to the upstream: {0}")]
    Connect(Box<dyn StdError + Send + Sync>),
    /// The connection broke or the upstream answered with something that is not HTTP.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The same, on a connection of the gateway's own client.
    #[error(transparent)]
    Wire(#[from] WireError),
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Requests without a body go over a `Wire`; `false`: over hyper's client too.
    wire: bool,
    shards: Box<[Mutex<Shard>]>,
}

/// One worker's idle connections, by upstream number (`Upstream::id`).
#[derive(Default)]
struct Shard {
    by_upstream: Vec<Idle>,
}

/// An upstream's idle connections of each kind, newest last.
#[derive(Default)]
struct Idle {
    senders: Vec<Resting<Sender>>,
    wires: Vec<Resting<Box<Wire>>>,
}

struct Resting<C> {
    conn: C,
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
    pub fn new(config: &UpstreamConfig, shards: usize, wire: bool) -> Arc<Self> {
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
            wire,
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
        })
    }

    /// Sends `request` (origin-form URI) to `upstream` on an idle connection of `worker`'s
    /// shard, or on a new one. `upgrade`: the request asks to switch protocols. The response
    /// comes without its hop-by-hop fields, whichever client read it.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Upstream,
        worker: usize,
        request: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        let home = Home {
            pool: self.clone(),
            shard: u32::try_from(worker % self.shards.len()).unwrap_or(0),
            upstream: u32::try_from(upstream.id).unwrap_or(u32::MAX),
        };
        if !request_has_body(request.body()) && !upgrade && self.wire {
            return self.send_on_wire(home, upstream, request).await;
        }
        // Boxed: the rarer path, whose future would otherwise size every request's.
        Box::pin(self.send_on_hyper(home, upstream, request)).await
    }

    /// A request without a body, over the gateway's own client. An idle connection the
    /// upstream closed meanwhile fails before any answer; an idempotent request is then sent
    /// again on the next connection (RFC 9110 §9.2.2), anything else fails.
    async fn send_on_wire(
        &self,
        home: Home,
        upstream: &Upstream,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let (parts, _empty) = request.into_parts();
        let head = wire::encode_head(&parts);
        let retry = parts.method.is_idempotent();
        loop {
            let Some(mut wire) = self.checkout_wire(&home).await else {
                break;
            };
            match wire.exchange(&head, &parts.method).await {
                Ok(answer) => return Ok(home.lend_wire(wire, answer)),
                Err(e) if retry && e.unanswered() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let io = Box::pin(self.open(upstream)).await?;
        let mut wire = Wire::new(io);
        let answer = wire.exchange(&head, &parts.method).await?;
        Ok(home.lend_wire(wire, answer))
    }

    /// A request with a body, or an upgrade, over hyper's client. A request an idle
    /// connection turned out unable to take (the upstream closed it meanwhile) is sent again
    /// on a new connection: it was never written, so even a POST is safe to resend.
    async fn send_on_hyper(
        &self,
        home: Home,
        upstream: &Upstream,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        // `loop` and `let else`, not `while let`: the checkout future would live through the
        // loop's body, beside the send's, in this future's state.
        loop {
            let Some(mut sender) = self.checkout_sender(&home).await else {
                break;
            };
            match sender.try_send_request(request).await {
                Ok(response) => return home.lend(sender, without_hops(response)?),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let io = self.open(upstream).await?;
        let mut sender = handshake(io).await?;
        let response = sender.send_request(request).await?;
        home.lend(sender, without_hops(response)?)
    }

    /// The newest idle hyper connection of the shard that is ready for a request. A
    /// connection returned a moment ago may still be finishing its last response: waiting
    /// for it takes microseconds, and it either becomes ready or turns out closed.
    async fn checkout_sender(&self, home: &Home) -> Option<Sender> {
        loop {
            let mut sender = {
                let mut shard = self.shard(home.shard);
                let idle = shard.by_upstream.get_mut(home.upstream as usize)?;
                self.newest(&mut idle.senders)?
            };
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// The newest idle connection of the shard's own client that the upstream has not
    /// closed.
    async fn checkout_wire(&self, home: &Home) -> Option<Box<Wire>> {
        loop {
            let mut wire = {
                let mut shard = self.shard(home.shard);
                let idle = shard.by_upstream.get_mut(home.upstream as usize)?;
                self.newest(&mut idle.wires)?
            };
            if poll_fn(|cx| Poll::Ready(wire.still_open(cx))).await {
                return Some(wire);
            }
        }
    }

    /// The newest connection of `list`, unless it has been idle too long, in which case
    /// so has every older one.
    fn newest<C>(&self, list: &mut Vec<Resting<C>>) -> Option<C> {
        let newest = list.pop()?;
        if newest.since.elapsed() > self.idle_timeout {
            list.clear();
            return None;
        }
        Some(newest.conn)
    }

    fn checkin_sender(&self, home: &Home, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        self.checkin(home, sender, |idle| &mut idle.senders);
    }

    fn checkin_wire(&self, home: &Home, wire: Box<Wire>) {
        self.checkin(home, wire, |idle| &mut idle.wires);
    }

    fn checkin<C>(
        &self,
        home: &Home,
        conn: C,
        list: impl FnOnce(&mut Idle) -> &mut Vec<Resting<C>>,
    ) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(home.shard);
        let index = home.upstream as usize;
        if shard.by_upstream.len() <= index {
            shard.by_upstream.resize_with(index + 1, Idle::default);
        }
        let list = list(&mut shard.by_upstream[index]);
        // Oldest first: drop those past the idle timeout, then make room under the cap.
        let stale = list.partition_point(|idle| now - idle.since > self.idle_timeout);
        list.drain(..stale);
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Resting { conn, since: now });
    }

    fn shard(&self, index: u32) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave it inconsistent (a Vec push or pop).
        self.shards[index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection to `upstream`: TCP, and TLS for an `https` upstream.
    async fn open(&self, upstream: &Upstream) -> Result<Io, SendError> {
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
        Ok(TokioIo::new(io))
    }
}

/// A response from hyper's client without its connection fields, as the gateway's own
/// client returns them. Its framing fields are checked as the gateway's own client checks
/// them (`framing::Declared::check`): hyper reads a length beside a coding as chunked and
/// would pass the length on, and does not read the lengths of an answer to HEAD, nor of a
/// 204 or 304, which, disagreeing, would make hyper's server drop the client's connection.
/// Dropped, the response takes its connection with it.
fn without_hops<B>(mut response: Response<B>) -> Result<Response<B>, SendError> {
    if let Err(e) = Declared::of(response.headers()).check() {
        return Err(SendError::Wire(WireError::Malformed(e)));
    }
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    hop::strip_response(response.headers_mut(), switching);
    Ok(response)
}

/// Hands a new connection to hyper's client. The connection runs as a task of the worker
/// that opened it, the same worker whose requests will borrow it.
async fn handshake(io: Io) -> Result<Sender, SendError> {
    let (sender, connection) = http1::Builder::new().handshake(io.into_inner()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

impl Home {
    fn lend(
        self,
        sender: Sender,
        response: Response<Incoming>,
    ) -> Result<Response<PooledBody>, SendError> {
        // A connection that switched protocols belongs to the tunnel from now on.
        let lease = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then_some(Lease { home: self, sender });
        Ok(response.map(|body| PooledBody {
            kind: Kind::Hyper { body, lease },
        }))
    }

    fn lend_wire(self, wire: Box<Wire>, answer: Answer) -> Response<PooledBody> {
        let (response, body) = WireBody::new(wire, answer);
        response.map(|()| PooledBody {
            kind: Kind::Wire {
                body: Some(body),
                home: self,
            },
        })
    }
}

struct Lease {
    home: Home,
    sender: Sender,
}

/// Why an upstream's response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// An upstream's response body; its connection goes back to the pool once the body has
/// been read to its end. Dropped before that, the connection is closed, as it must be: the
/// rest of the body would otherwise be read as the next response.
pub struct PooledBody {
    kind: Kind,
}

enum Kind {
    Hyper {
        body: Incoming,
        lease: Option<Lease>,
    },
    Wire {
        /// `None` once the connection has gone back or been dropped.
        body: Option<WireBody>,
        home: Home,
    },
}

impl PooledBody {
    /// Hands the connection back once its body has ended, once.
    fn release_if_done(&mut self, ended: bool) {
        match &mut self.kind {
            Kind::Hyper { body, lease } => {
                if ended || body.is_end_stream() {
                    if let Some(Lease { home, sender }) = lease.take() {
                        home.pool.checkin_sender(&home, sender);
                    }
                }
            }
            Kind::Wire { body, home } => {
                if body.as_ref().is_some_and(WireBody::is_end_stream) {
                    if let Some(wire) = body.take().and_then(WireBody::into_reusable) {
                        home.pool.checkin_wire(home, wire);
                    }
                }
            }
        }
    }

    /// Forgets the connection: a broken body's cannot carry another request.
    fn abandon(&mut self) {
        match &mut self.kind {
            Kind::Hyper { lease, .. } => *lease = None,
            Kind::Wire { body, .. } => *body = None,
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.kind {
            Kind::Hyper { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Wire {
                body: Some(body), ..
            } => body.poll_frame(cx).map_err(Into::into),
            Kind::Wire { body: None, .. } => Poll::Ready(None),
        };
        let polled = polled.map(|frame| frame.map(|frame| frame.map(clean_trailers)));
        match &polled {
            // A chunked body's end is known only here: `is_end_stream` never says so.
            Poll::Ready(None) => self.release_if_done(true),
            Poll::Ready(Some(Ok(_))) => self.release_if_done(false),
            Poll::Ready(Some(Err(_))) => self.abandon(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hyper { body, .. } => body.is_end_stream(),
            Kind::Wire { body, .. } => body.as_ref().is_none_or(WireBody::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper { body, .. } => body.size_hint(),
            Kind::Wire { body, .. } => match body.as_ref().map_or(Some(0), WireBody::exact_len) {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

/// An upstream's trailer fields go through the same filter as its header fields, and more:
/// see `hop::clean_trailers`.
fn clean_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            hop::clean_trailers(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, 304, HEAD, `Content-Length: 0`) is never polled.
        self.release_if_done(false);
    }
}
