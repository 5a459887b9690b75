//! The gateway's own HTTP/1.1, beside hyper: one seam for the fast paths.
//!
//! Nearly every request is a bodiless HTTP/1.1 `GET`, and for those hyper's server and
//! client cost a quarter of a request (see `lane` and `wire` for the measurements). So the
//! server reads and answers such requests itself (`lane`), and forwards bodiless requests
//! over its own upstream client (`wire`, with its connections kept by `pool`); everything
//! else — bodies, upgrades, HTTP/1.0, HTTP/2, any head that is not plainly valid — is
//! hyper's. `server.http1_fast_paths = false` turns both off, and hyper serves and forwards
//! everything (`docs/http1.md`).
//!
//! Two parsers on one connection and a hand-written client are where request smuggling,
//! response-queue poisoning and header spoofing live, so what both paths must agree on is
//! decided once, here: how a body is framed and whether a message has one (`framing`), and
//! which fields belong to the connection rather than the message (`hop`), used by the lane,
//! the wire, and hyper's paths alike. The rest of the gateway sees only what is re-exported
//! below.

mod client_body;
mod framing;
mod head;
pub(crate) mod hop;
mod lane;
mod pool;
mod wire;

// The server's connection loop (`server::conn`): the lane's request reading and answer
// writing, and whether a request hyper read has a body.
pub(crate) use framing::request_has_body;
pub(crate) use lane::{Next, take_request, write_response};
// The gate: the body limit and the access log read a message's length as the fast paths do.
pub(crate) use framing::content_length;
// The proxy: the upstream client, whichever of the wire or hyper's client it uses, and the
// bodies it sends and returns. The proxy's request cleaning also reads `hop`.
pub use pool::{Pool, PooledBody, SendError, UpstreamBody};
// The request body every part of the gateway passes on.
pub use client_body::{ClientBody, ClientBodyError, Doubtful};

/// A field map from name and value pairs, for the tests of the modules that read one.
#[cfg(test)]
pub(crate) fn fields(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, http::HeaderValue::from_static(value));
    }
    headers
}

/// What the fuzz targets (`crate::fuzzing`) reach behind the interface: the parsers and the
/// body reader on their own, without sockets.
#[cfg(feature = "dev-tools")]
pub(crate) mod fuzz {
    pub(crate) use super::framing::{Framing, Reader, Step};
    pub(crate) use super::lane::{Next, take_request};
    pub(crate) use super::wire::{framing, parse_head};
}
