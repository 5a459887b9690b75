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
