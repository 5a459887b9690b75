//! What a client connection is doing, as far as its driver needs to know: whether bytes moved
//! lately, whether a request is in flight, and whether hyper stands between two requests with
//! nothing half read or unanswered — the only moment its state can be dropped without the
//! client noticing (see `conn`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's traffic and request state, shared by its I/O stream, its service and its
/// driver. All three run in the connection's one task, so every access is uncontended;
/// atomics only because hyper wants its parts `Send`.
#[derive(Clone)]
pub struct Activity(Arc<State>);

#[derive(Default)]
struct State {
    /// Reads and writes that moved bytes, counted: the driver compares it between two looks
    /// instead of reading the clock on every read and write.
    moves: AtomicU64,
    /// A byte arrived after the last one went out: a request may be half read.
    read_since_write: AtomicBool,
    /// Requests whose service or response body is still alive.
    in_flight: AtomicUsize,
    /// The last request came with a body, which the gateway may not have read to its end.
    /// hyper itself never lets a half-read body pass for a message boundary (it drains the
    /// body or closes the connection), so this is a second lock on the door: parking in the
    /// middle of a body would make its rest parse as a request.
    body_pending: AtomicBool,
    /// Shutting the stream down is skipped: hyper is being ended to park the connection, and
    /// the socket stays open.
    parking: AtomicBool,
}

impl Activity {
    pub fn new() -> Self {
        Self(Arc::default())
    }

    /// Reads and writes so far; changes whenever bytes move.
    pub fn moves(&self) -> u64 {
        self.0.moves.load(Ordering::Relaxed)
    }

    /// Between two requests, with nothing half read or unanswered, and the last request body
    /// known to be read to its end. (A response hyper has not flushed yet needs no watching
    /// here: hyper ends a connection only once its write buffer is empty.)
    pub fn at_rest(&self) -> bool {
        let state = &self.0;
        state.in_flight.load(Ordering::Relaxed) == 0
            && !state.body_pending.load(Ordering::Relaxed)
            && !state.read_since_write.load(Ordering::Relaxed)
    }

    /// A request has arrived; it stays in flight until the guard (carried by its response
    /// body) is dropped.
    pub fn request(&self, has_body: bool) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        // A request is only parsed once the previous one's body has been read to its end, so
        // this one's word replaces the last one's.
        self.0.body_pending.store(has_body, Ordering::Relaxed);
        InFlight(self.0.clone())
    }

    pub fn set_parking(&self, parking: bool) {
        self.0.parking.store(parking, Ordering::Relaxed);
    }

    fn moved(&self) {
        // One task owns the stream: no other writer can interleave with this load and store.
        let moves = self.0.moves.load(Ordering::Relaxed);
        self.0.moves.store(moves.wrapping_add(1), Ordering::Relaxed);
    }

    fn read(&self) {
        self.moved();
        self.0.read_since_write.store(true, Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.moved();
        self.0.read_since_write.store(false, Ordering::Relaxed);
    }

    fn parking(&self) -> bool {
        self.0.parking.load(Ordering::Relaxed)
    }
}

/// One request in flight, until dropped.
pub struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream that reports its traffic to an `Activity`.
    pub struct Tracked<T> {
        #[pin]
        inner: T,
        activity: Activity,
    }
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        result
    }
}

impl<T: AsyncWrite> Tracked<T> {
    fn wrote(activity: &Activity, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            activity.wrote();
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        Self::wrote(this.activity, &result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        Self::wrote(this.activity, &result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.activity.parking() {
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_is_at_rest_only_between_answered_requests() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut server = Tracked::new(server, activity.clone());
        let mut client = client;
        assert!(activity.at_rest());

        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = server.read(&mut buf).await.unwrap();
        assert!(!activity.at_rest(), "half a request head has been read");

        let request = activity.request(false);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(!activity.at_rest(), "the response body is still alive");
        drop(request);
        assert!(activity.at_rest());

        let with_body = activity.request(true);
        drop(with_body);
        assert!(
            !activity.at_rest(),
            "the request body may not have been read"
        );
        drop(activity.request(false));
        assert!(activity.at_rest());
    }

    #[tokio::test]
    async fn shutdown_is_skipped_while_parking() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut server = Tracked::new(server, activity.clone());
        activity.set_parking(true);
        server.shutdown().await.unwrap();
        server.write_all(b"still open").await.unwrap();
        let mut buf = [0u8; 10];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still open");
        activity.set_parking(false);
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }
}
