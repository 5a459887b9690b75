//! The body of every answer the gateway sends: what upstreams stream back, or a small page
//! the gateway wrote itself. An `Either` rather than a boxed body, so proxying allocates
//! nothing per response for the body's sake. (A client's request body is
//! [`crate::http1::ClientBody`].)

use bytes::Bytes;
use http_body_util::{Either, Full};

use crate::http1::PooledBody;

/// What the gateway answers a client with.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// A body the gateway wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

pub fn empty() -> Body {
    full(Bytes::new())
}
