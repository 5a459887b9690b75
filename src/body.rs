//! The body types that cross the gateway: what upstreams stream back, and the small pages
//! the gateway writes itself. An `Either` rather than a boxed body, so proxying allocates
//! nothing per response for the body's sake.

use bytes::Bytes;
use http_body_util::{Either, Full};

use crate::proxy::PooledBody;

/// What the gateway answers a client with.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// A body the gateway wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// What a client's request carries: hyper's body stream, or nothing at all for a request
/// the server's own HTTP/1.1 lane read (it takes only requests without a body).
#[derive(Debug)]
pub enum ClientBody {
    None,
    Streamed(hyper::body::Incoming),
}

impl From<hyper::body::Incoming> for ClientBody {
    fn from(body: hyper::body::Incoming) -> Self {
        ClientBody::Streamed(body)
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::None => std::task::Poll::Ready(None),
            ClientBody::Streamed(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::None => true,
            ClientBody::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ClientBody::None => http_body::SizeHint::with_exact(0),
            ClientBody::Streamed(body) => body.size_hint(),
        }
    }
}
