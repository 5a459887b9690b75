//! The client's request body as the gate and the upstream client see it: hyper's stream,
//! or nothing for a request the lane read, with the connection told when the body ended in
//! a way that makes the bytes after it untrustworthy.

use bytes::Bytes;

/// What a client's request carries: hyper's body stream, or nothing at all for a request
/// the server's own HTTP/1.1 lane read (it takes only requests without a body).
///
/// A request's trailer fields never go further than here: nothing behind the gateway needs
/// them, and dropped they cannot carry an identity or forwarding claim past the header
/// cleaning (issue 19). A body that ended with a trailer section, or that broke, marks its
/// connection [`Doubtful`]: hyper's chunked reader is lenient exactly there (a bare LF after
/// the last chunk makes it read the next request as trailer fields), so the connection is
/// closed after the answer instead of read on.
#[derive(Debug)]
pub enum ClientBody {
    None,
    Streamed(hyper::body::Incoming, Doubtful),
}

/// Set when a request body ended in a way that makes the bytes after it untrustworthy.
#[derive(Debug, Clone, Default)]
pub struct Doubtful(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl Doubtful {
    /// A flag the connection reads after the answer.
    pub fn watched() -> Self {
        Doubtful(Some(std::sync::Arc::default()))
    }

    fn mark(&self) {
        if let Some(flag) = &self.0 {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn is_set(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// A client's request body broke: malformed framing, or the client went away. The client's
/// fault, told apart from an upstream's failure by its type.
#[derive(Debug, thiserror::Error)]
#[error("the request body is malformed or incomplete: {0}")]
pub struct ClientBodyError(#[from] pub hyper::Error);

impl From<hyper::body::Incoming> for ClientBody {
    fn from(body: hyper::body::Incoming) -> Self {
        ClientBody::Streamed(body, Doubtful::default())
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, ClientBodyError>>> {
        use std::task::Poll;
        let ClientBody::Streamed(body, doubtful) = self.get_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match std::pin::Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => doubtful.mark(),
                Poll::Ready(Some(Err(e))) => {
                    doubtful.mark();
                    return Poll::Ready(Some(Err(ClientBodyError(e))));
                }
                other => return other.map_err(ClientBodyError),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::None => true,
            ClientBody::Streamed(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ClientBody::None => http_body::SizeHint::with_exact(0),
            ClientBody::Streamed(body, _) => body.size_hint(),
        }
    }
}
