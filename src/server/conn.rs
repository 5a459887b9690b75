//! One client connection, from its first byte to its close: which HTTP it speaks, serving it
//! with the configured limits, and parking it while it is idle.
//!
//! Serving: an HTTP/1.1 connection is served by the lane (`lane`) while its requests have no
//! body, and by hyper from the first request that does (or that is anything else unusual)
//! until it next parks; HTTP/2 by hyper throughout.
//!
//! Parking: an HTTP/1.1 connection that stands between two requests, with nothing in flight,
//! for `PARK_AFTER` gives up its HTTP state — the lane's buffers, or hyper's connection with
//! its two 8 KiB buffers and parser — and keeps only its socket. hyper's connection is ended
//! without shutting the socket down. When the client sends again, the lane starts over with
//! what was read. nginx does the same between keep-alive requests (it frees the request's
//! pool and header buffer); without it, ten thousand idle keep-alive connections held about
//! 20 KiB each. HTTP/2 connections are not parked.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::Handler;
use super::idle::{Activity, InFlight, Tracked};
use super::rewind::Rewind;
#[cfg(test)]
use super::signals::PARK_AFTER;
use super::signals::{Event, Rest, Signals, Verdict};
use crate::body::Body;
use crate::config::LimitsConfig;
use crate::gate::ConnInfo;
use crate::http1::{ClientBody, Doubtful};
use crate::http1::{Next, request_has_body, take_request, write_response};

/// What the connection hook hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    Opened,
    Closed,
    Parked,
    Resumed,
}

pub type ConnHook = Arc<dyn Fn(ConnEvent) + Send + Sync>;

/// The first bytes an HTTP/2 client sends (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes a parked (or new) connection reads to notice it has been woken.
const WAKE_READ: usize = 64;

/// Room made in the lane's buffer before each read of a request head: what nearly every head
/// needs at once.
const LANE_READ: usize = 8 * 1024;

/// The lane's write buffer is kept between requests up to this size.
const LANE_WRITE_KEPT: usize = 16 * 1024;

/// How long closing a parked connection may take (a TLS close_notify to a full socket).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// hyper's HTTP/1.1 and HTTP/2 settings, built once per listener.
pub struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// hyper's HTTP/1.1 read buffer: the longest request head it reads.
    max_head: usize,
    /// The lane serves what it can (`server.http1_fast_paths`); `false`: hyper serves all.
    lane: bool,
}

impl Protocols {
    pub fn new(limits: &LimitsConfig, lane: bool) -> Self {
        // Room for the whole head; the exact header and URI limits are checked per request.
        let max_head = (limits.max_header_bytes + limits.max_uri_bytes + 1024).max(8192);
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers.max(1))
            .max_buf_size(max_head)
            // A client that sends its request and then closes its sending side (`shutdown`
            // after a POST) still gets its answer, as the lane gives it.
            .half_close(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(100)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Self {
            http1,
            http2,
            max_head,
            lane,
        }
    }
}

type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<Response<Guarded<Body>>, Infallible>> + Send>>;

/// hyper's part of an HTTP/1.1 connection, boxed so that parking frees it.
type H1Connection<I, S> = Pin<Box<http1::UpgradeableConnection<TokioIo<Rewind<Tracked<I>>>, S>>>;

/// How an HTTP/1.1 connection's hyper part ended.
enum H1End<I> {
    /// Closed, upgraded, or failed: nothing left to serve.
    Closed,
    /// Parked: the socket, and bytes hyper had read but not parsed.
    Parked(Tracked<I>, Bytes),
}

/// How the lane gave a connection up.
enum LaneEnd {
    /// Closed by the client, or to be closed now.
    Close,
    /// At rest long enough to park.
    Park,
    /// hyper serves it from here, from these bytes on.
    Hyper(Bytes),
}

/// What the first bytes of a connection say it speaks.
enum Protocol {
    Http1(Bytes),
    Http2(Bytes),
}

pub struct Conn<H> {
    pub protocols: Arc<Protocols>,
    pub handler: Arc<H>,
    pub shutdown: watch::Receiver<bool>,
    pub limits: LimitsConfig,
    pub on_conn: Option<ConnHook>,
}

impl<H: Handler> Conn<H> {
    pub async fn run(
        self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        tls: Option<TlsAcceptor>,
        worker: usize,
    ) {
        self.hook(ConnEvent::Opened);
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
            worker,
        };
        match tls {
            None => self.serve(stream, info).await,
            // Boxed: the TLS states (handshake, rustls connection) are several KiB, and unboxed
            // they would size the task of every plain connection too, for its whole life.
            Some(acceptor) => Box::pin(self.https(stream, info, acceptor)).await,
        }
        self.hook(ConnEvent::Closed);
    }

    fn hook(&self, event: ConnEvent) {
        if let Some(hook) = &self.on_conn {
            hook(event);
        }
    }

    async fn https(&self, stream: TcpStream, info: ConnInfo, acceptor: TlsAcceptor) {
        let handshake =
            tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
        let peer = info.peer;
        match handshake.await {
            Ok(Ok(stream)) => self.serve(stream, info).await,
            Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Serves the connection until it closes: waits for bytes, tells the protocol, then
    /// alternates between serving HTTP/1.1 and being parked.
    async fn serve<I>(&self, io: I, info: ConnInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let mut io = Tracked::new(io, activity.clone());
        let mut shutdown = self.shutdown.clone();
        let stop = async move {
            // A dropped sender means the server is gone: stop as well.
            let _ = shutdown.changed().await;
        };
        tokio::pin!(stop);
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut signals = Signals::new(stop, timer, self.limits.idle_timeout);

        let Some(first) = wait_for_bytes(&mut io, &activity, &mut signals).await else {
            return close(io).await;
        };
        let mut pending = match self.protocol(&mut io, first).await {
            Some(Protocol::Http1(bytes)) => bytes,
            Some(Protocol::Http2(bytes)) => {
                return self
                    .serve_h2(Rewind::new(io, bytes), info, &activity, &mut signals)
                    .await;
            }
            None => return close(io).await,
        };
        loop {
            signals.woke();
            let served = if self.protocols.lane {
                // Boxed so that parking frees it, with the request state it holds inline.
                Box::pin(self.serve_lane(&mut io, pending, info, &activity, &mut signals)).await
            } else {
                LaneEnd::Hyper(pending)
            };
            match served {
                LaneEnd::Close => return close(io).await,
                LaneEnd::Park => {}
                LaneEnd::Hyper(bytes) => {
                    let (back, rest) = match self
                        .serve_h1(Rewind::new(io, bytes), info, &activity, &mut signals)
                        .await
                    {
                        H1End::Closed => return,
                        H1End::Parked(back, rest) => (back, rest),
                    };
                    io = back;
                    if !rest.is_empty() {
                        // hyper had read part of a next request: serve it without waiting.
                        pending = rest;
                        continue;
                    }
                }
            }
            self.hook(ConnEvent::Parked);
            let woken = wait_for_bytes(&mut io, &activity, &mut signals).await;
            self.hook(ConnEvent::Resumed);
            match woken {
                Some(bytes) => pending = bytes,
                None => return close(io).await,
            }
        }
    }

    /// Reads on while the first bytes could still be the HTTP/2 preface.
    async fn protocol<I>(&self, io: &mut Tracked<I>, first: Bytes) -> Option<Protocol>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let mut seen = BytesMut::from(&first[..]);
        loop {
            let n = seen.len().min(H2_PREFACE.len());
            if seen[..n] != H2_PREFACE[..n] {
                return Some(Protocol::Http1(seen.freeze()));
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2(seen.freeze()));
            }
            // A client that stops partway through the preface is cut off like a slow head.
            let read =
                tokio::time::timeout(self.limits.header_read_timeout, io.read_buf(&mut seen));
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    fn service(
        &self,
        info: ConnInfo,
        activity: &Activity,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Guarded<Body>>,
        Error = Infallible,
        Future = BoxedResponse,
    > + use<H> {
        // An Arc of this connection's own around the shared handler: cloned for every request,
        // its count stays on this connection's cache line instead of bouncing between workers.
        let handler = Arc::new(self.handler.clone());
        let activity = activity.clone();
        service_fn(move |request: Request<Incoming>| {
            let has_body = request_has_body(request.body());
            let in_flight = activity.request(has_body);
            let handler = handler.clone();
            // Watched only when there is a body: see `ClientBody`.
            let doubtful = if has_body {
                Doubtful::watched()
            } else {
                Doubtful::default()
            };
            let request = request.map(|body| ClientBody::Streamed(body, doubtful.clone()));
            // Boxed: hyper keeps one slot the size of this future per connection for as long
            // as the connection lives; boxed, that slot is a pointer and the request's state
            // is freed when its response is sent.
            let respond: BoxedResponse = Box::pin(async move {
                let mut response = handler.call(request, info).await;
                if doubtful.is_set() {
                    // The body's end is in doubt, so is where the next request starts: hyper
                    // closes the connection after this answer instead of reading one.
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(response.map(|body| Guarded { body, in_flight }))
            });
            respond
        })
    }

    /// Serves requests in the lane (see `lane`) from `pending` on, until one is hyper's, the
    /// connection should close, or it has been at rest long enough to park.
    async fn serve_lane<I, S>(
        &self,
        io: &mut Tracked<I>,
        pending: Bytes,
        info: ConnInfo,
        activity: &Activity,
        signals: &mut Signals<'_, S>,
    ) -> LaneEnd
    where
        I: AsyncRead + AsyncWrite + Unpin,
        S: Future,
    {
        let mut buf = BytesMut::from(pending);
        let mut spans = Vec::new();
        let mut out = BytesMut::new();
        let mut shutting_down = false;
        let mut head_deadline = None;
        loop {
            if buf.is_empty() {
                if shutting_down {
                    return LaneEnd::Close;
                }
                buf.reserve(LANE_READ);
                let read = io.read_buf(&mut buf);
                tokio::pin!(read);
                loop {
                    match signals.drive(read.as_mut()).await {
                        Event::Ended(Ok(n)) if n > 0 => break,
                        Event::Ended(_) | Event::Shutdown => return LaneEnd::Close,
                        Event::Quiet => match signals.look(activity.moves(), Rest::Idle) {
                            Verdict::Wait => {}
                            Verdict::Close => return LaneEnd::Close,
                            Verdict::Park => return LaneEnd::Park,
                        },
                    }
                }
            }
            let (request, asked) = match take_request(&mut buf, &mut spans) {
                Next::Serve { request, asked } => (request, asked),
                Next::Hyper => return LaneEnd::Hyper(buf.freeze()),
                // As long as hyper's buffer: hyper refuses it at once, with no second timeout.
                Next::Partial if buf.len() >= self.protocols.max_head => {
                    return LaneEnd::Hyper(buf.freeze());
                }
                Next::Partial => {
                    // The head's time runs from when it was first seen incomplete, however many
                    // reads it then takes.
                    let deadline = *head_deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.limits.header_read_timeout
                    });
                    if !read_head(io, &mut buf, deadline, activity, signals).await {
                        return LaneEnd::Close;
                    }
                    continue;
                }
            };
            head_deadline = None;
            let answer = async {
                let response = self.handler.call(request, info).await;
                write_response(io, &mut out, response, asked).await
            };
            let reusable = {
                tokio::pin!(answer);
                loop {
                    match signals.drive(answer.as_mut()).await {
                        Event::Ended(written) => break written.unwrap_or(false),
                        // The request in hand is answered first, as hyper's graceful shutdown
                        // does.
                        Event::Shutdown => shutting_down = true,
                        Event::Quiet => {
                            if signals.look(activity.moves(), Rest::Busy) == Verdict::Close {
                                return LaneEnd::Close;
                            }
                        }
                    }
                }
            };
            if !reusable || shutting_down {
                return LaneEnd::Close;
            }
            if out.capacity() > LANE_WRITE_KEPT {
                // A large answer's buffer is not held for the next, usually small, one.
                out = BytesMut::new();
            }
        }
    }

    async fn serve_h1<I, S>(
        &self,
        io: Rewind<Tracked<I>>,
        info: ConnInfo,
        activity: &Activity,
        signals: &mut Signals<'_, S>,
    ) -> H1End<I>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Future,
    {
        let service = self.service(info, activity);
        // Boxed so that parking frees it: the connection's task keeps only what `serve` holds.
        let mut conn: H1Connection<I, _> = Box::pin(
            self.protocols
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        loop {
            match signals.drive(conn.as_mut()).await {
                Event::Ended(result) => {
                    log_end(result, info);
                    return H1End::Closed;
                }
                Event::Shutdown => break,
                Event::Quiet => {
                    let rest = if activity.at_rest() {
                        Rest::Idle
                    } else {
                        Rest::Busy
                    };
                    match signals.look(activity.moves(), rest) {
                        Verdict::Wait => {}
                        Verdict::Close => break,
                        Verdict::Park => return park(conn, activity, info).await,
                    }
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        log_end(conn.await, info);
        H1End::Closed
    }

    async fn serve_h2<I, S>(
        &self,
        io: Rewind<Tracked<I>>,
        info: ConnInfo,
        activity: &Activity,
        signals: &mut Signals<'_, S>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Future,
    {
        signals.woke();
        let service = self.service(info, activity);
        let conn = self
            .protocols
            .http2
            .serve_connection(TokioIo::new(io), service);
        let mut conn = Box::pin(conn);
        loop {
            match signals.drive(conn.as_mut()).await {
                Event::Ended(result) => return log_end(result, info),
                Event::Shutdown => break,
                Event::Quiet => {
                    if signals.look(activity.moves(), Rest::Busy) == Verdict::Close {
                        break;
                    }
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        log_end(conn.await, info);
    }
}

/// Ends hyper's connection between two requests without shutting its socket down, and takes
/// the socket back with whatever hyper had read but not parsed.
async fn park<I, S>(mut conn: H1Connection<I, S>, activity: &Activity, info: ConnInfo) -> H1End<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Guarded<Body>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    activity.set_parking(true);
    // At rest, hyper closes at once: nothing is read, written or answered any more.
    conn.as_mut().graceful_shutdown();
    let ended = conn.as_mut().await;
    activity.set_parking(false);
    if let Err(e) = ended {
        tracing::debug!(error = %e, peer = %info.peer, "connection ended with an error");
        return H1End::Closed;
    }
    let Some(parts) = Pin::into_inner(conn).into_parts() else {
        return H1End::Closed;
    };
    let (io, unread_prefix) = parts.io.into_inner().into_parts();
    let rest = if unread_prefix.is_empty() {
        parts.read_buf
    } else {
        [unread_prefix, parts.read_buf].concat().into()
    };
    H1End::Parked(io, rest)
}

/// Reads more of a request head, until `deadline`; false if the connection is to close:
/// the head came too slowly, the client closed, or the server is shutting down.
async fn read_head<I, S>(
    io: &mut Tracked<I>,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
    activity: &Activity,
    signals: &mut Signals<'_, S>,
) -> bool
where
    I: AsyncRead + Unpin,
    S: Future,
{
    buf.reserve(LANE_READ);
    let read = tokio::time::timeout_at(deadline, io.read_buf(buf));
    tokio::pin!(read);
    loop {
        match signals.drive(read.as_mut()).await {
            Event::Ended(Ok(Ok(n))) => return n > 0,
            Event::Ended(_) | Event::Shutdown => return false,
            Event::Quiet => {
                // Half a head is never at rest.
                if signals.look(activity.moves(), Rest::Busy) == Verdict::Close {
                    return false;
                }
            }
        }
    }
}

/// Waits, holding nothing but the socket, until the client sends: the bytes it sent, or
/// None once it closes, the connection has been idle for `idle_timeout`, or the server
/// shuts down.
async fn wait_for_bytes<I, S>(
    io: &mut Tracked<I>,
    activity: &Activity,
    signals: &mut Signals<'_, S>,
) -> Option<Bytes>
where
    I: AsyncRead + Unpin,
    S: Future,
{
    let mut buf = [0u8; WAKE_READ];
    let read = io.read(&mut buf);
    tokio::pin!(read);
    loop {
        match signals.drive(read.as_mut()).await {
            Event::Ended(Ok(n)) if n > 0 => return Some(Bytes::copy_from_slice(&buf[..n])),
            Event::Ended(_) | Event::Shutdown => return None,
            Event::Quiet => {
                if signals.look(activity.moves(), Rest::Parked) == Verdict::Close {
                    return None;
                }
            }
        }
    }
}

/// Closes a connection hyper is not serving: FIN for TCP, close_notify first for TLS.
async fn close<I: AsyncWrite + Unpin>(mut io: Tracked<I>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, io.shutdown()).await;
}

fn log_end(result: Result<(), hyper::Error>, info: ConnInfo) {
    if let Err(e) = result {
        tracing::debug!(error = %e, peer = %info.peer, "connection ended with an error");
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until hyper drops it.
    pub struct Guarded<B> {
        #[pin]
        body: B,
        in_flight: InFlight,
    }
}

impl<B: HttpBody> HttpBody for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// Answers every request with the same body.
    struct Answer(Bytes);

    impl Handler for Answer {
        async fn call(&self, _request: Request<ClientBody>, _conn: ConnInfo) -> Response<Body> {
            Response::new(crate::body::full(self.0.clone()))
        }
    }

    /// Answers with the request's method, target and body.
    struct Echo;

    impl Handler for Echo {
        async fn call(&self, request: Request<ClientBody>, _conn: ConnInfo) -> Response<Body> {
            use http_body_util::BodyExt;
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} {}",
                parts.method,
                parts.uri,
                String::from_utf8_lossy(&body)
            );
            Response::new(crate::body::full(text))
        }
    }

    /// A connection served over an in-memory pipe of `capacity` bytes, and what its hook heard.
    fn serve_over_pipe(
        body: Bytes,
        capacity: usize,
    ) -> (
        DuplexStream,
        Arc<Mutex<Vec<ConnEvent>>>,
        watch::Sender<bool>,
    ) {
        serve_with_pipe(Answer(body), capacity)
    }

    fn serve_with_pipe<H: Handler>(
        handler: H,
        capacity: usize,
    ) -> (
        DuplexStream,
        Arc<Mutex<Vec<ConnEvent>>>,
        watch::Sender<bool>,
    ) {
        let (client, server) = tokio::io::duplex(capacity);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        let (stop, shutdown) = watch::channel(false);
        let limits = LimitsConfig::default();
        let conn = Conn {
            protocols: Arc::new(Protocols::new(&limits, true)),
            handler: Arc::new(handler),
            shutdown,
            limits,
            on_conn: Some(Arc::new(move |event| log.lock().unwrap().push(event))),
        };
        let info = ConnInfo {
            peer: ([127, 0, 0, 1], 1).into(),
            tls: false,
            worker: 0,
        };
        tokio::spawn(async move { conn.serve(server, info).await });
        (client, heard, stop)
    }

    async fn read_response(client: &mut DuplexStream) -> Vec<u8> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(client.read(&mut byte).await.unwrap(), 1, "closed early");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).await.unwrap();
        body
    }

    async fn read_text(client: &mut DuplexStream) -> String {
        String::from_utf8(read_response(client).await).unwrap()
    }

    #[tokio::test]
    async fn requests_pipelined_across_the_lane_and_hyper_are_each_answered_in_order() {
        let (mut client, heard, _stop) = serve_with_pipe(Echo, 64 * 1024);
        // The lane serves the first GET; the POST, and what follows it in the same bytes, go
        // to hyper whole; a head split across writes is waited for.
        client
            .write_all(
                b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
                  POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  GET /3 HTTP/1.1\r\nHost: x\r\n\r\nGET /4 HT",
            )
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "GET /1 ");
        assert_eq!(read_text(&mut client).await, "POST /2 hello");
        assert_eq!(read_text(&mut client).await, "GET /3 ");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client
            .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "GET /4 ");
        // After a park, the lane again, with a head that arrives in pieces.
        tokio::time::sleep(PARK_AFTER * 5 / 2).await;
        client.write_all(b"HEAD /5 HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client
            .write_all(b"Host: x\r\n\r\nGET /6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = String::new();
        client.read_to_string(&mut rest).await.unwrap();
        let (head, sixth) = rest.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(
            head.contains("content-length: 8"),
            "a HEAD says the GET's length: {rest}"
        );
        assert!(sixth.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(sixth.contains("\r\nconnection: close\r\n"), "{rest}");
        assert!(sixth.ends_with("\r\n\r\nGET /6 "), "{rest}");
        assert_eq!(
            *heard.lock().unwrap(),
            [ConnEvent::Parked, ConnEvent::Resumed]
        );
    }

    #[tokio::test]
    async fn a_response_waiting_for_the_client_to_read_it_is_not_parked_away() {
        // A body small enough for hyper to take whole and see end at once (so nothing of the
        // request is in flight any more), larger than the 1 KiB the pipe takes: the rest waits
        // in hyper's write buffer until the client reads. hyper ends its connection only once
        // that buffer is flushed, so the connection parks only after the client has it all.
        let body = Bytes::from(vec![7u8; 4 * 1024]);
        let (mut client, heard, _stop) = serve_over_pipe(body.clone(), 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Quiet for longer than it takes to park a connection at rest.
        tokio::time::sleep(PARK_AFTER * 5 / 2).await;
        assert!(heard.lock().unwrap().is_empty());
        assert_eq!(read_response(&mut client).await, body);

        // Once the client has it all, the connection is at rest and parks, and serves again.
        tokio::time::sleep(PARK_AFTER * 5 / 2).await;
        assert_eq!(*heard.lock().unwrap(), [ConnEvent::Parked]);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut client).await, body);
        assert_eq!(
            *heard.lock().unwrap(),
            [ConnEvent::Parked, ConnEvent::Resumed]
        );
    }
}
