//! Forwarding to upstreams: keep-alive connections per worker, bodies streamed both ways,
//! hop-by-hop headers removed, `X-Forwarded-*` set, and `Upgrade` requests (WebSocket)
//! tunnelled once the upstream has said 101.

mod headers;

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper_util::rt::TokioIo;

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::http1::{Pool, SendError};
pub use crate::http1::{PooledBody, UpstreamBody};
use crate::route::Route;
pub use headers::{Cleaned, clean_request};

/// How the client reached the gateway, for the forwarded headers.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    /// The direct peer is a trusted proxy: its `X-Forwarded-*` are kept and extended.
    pub trusted: bool,
    pub tls: bool,
}

/// Who sent a request to forward, and what cleaning it found.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: Peer,
    /// The worker thread serving the request: it lends the upstream connection.
    pub worker: usize,
    pub cleaned: Cleaned,
}

/// Why a request got no answer from its upstream: the proxy's part of the one error path
/// (`crate::failure` turns it into what the visitor sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// CONNECT asks for a tunnel, which the gateway does not open.
    #[error("a CONNECT tunnel was asked for")]
    Tunnel,
    /// The normalised target cannot be written as a request line.
    #[error("the request target cannot be forwarded")]
    Target,
    /// No connection could be opened.
    #[error("the upstream cannot be reached")]
    Unreachable,
    /// The upstream took longer than the route's timeout.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The upstream broke the exchange (reset, malformed answer, an unasked-for 101).
    #[error("the upstream broke off the exchange")]
    Broken,
    /// The client's body is over the limit.
    #[error("the request body is over the limit")]
    BodyTooLarge,
    /// The client's body is malformed or ended early.
    #[error("the request body is malformed or incomplete")]
    BadBody,
}

pub struct Proxy {
    pool: Arc<Pool>,
}

impl Proxy {
    /// `workers`: the worker threads that will forward requests, each keeping its own
    /// upstream connections.
    /// `wire`: requests without a body go over the gateway's own client (`wire`); off,
    /// hyper's client sends everything (`server.http1_fast_paths`).
    pub fn new(config: &UpstreamConfig, workers: usize, wire: bool) -> Self {
        Self {
            pool: Pool::new(config, workers, wire),
        }
    }

    /// Sends `request`, cleaned by [`clean_request`], to the route's upstream and returns its
    /// response, or why it could not. `client_upgrade` is the client's side of an upgrade
    /// the gateway lets through.
    pub async fn forward(
        &self,
        mut request: Request<UpstreamBody>,
        route: &Route,
        path: &str,
        client: Client,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, ProxyError> {
        if !client.cleaned.has_host() {
            // HTTP/2 carries the host in the URI's authority, and an HTTP/1.0 client may send
            // none; upstreams speak HTTP/1.1, which requires `Host`.
            let host = request
                .uri()
                .authority()
                .unwrap_or(&route.upstream.authority);
            if let Ok(host) = HeaderValue::from_str(host.as_str()) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        if request.method() == http::Method::CONNECT {
            // A tunnel is not a request an origin answers; the gate refuses it first, and
            // it never reaches an upstream connection that other visitors share.
            return Err(ProxyError::Tunnel);
        }
        headers::join_cookies(request.headers_mut());
        // The client's trailer fields are dropped (`ClientBody`), so none is announced.
        request.headers_mut().remove(header::TRAILER);
        *request.uri_mut() = origin_form(path, request.uri())?;
        *request.version_mut() = http::Version::HTTP_11;
        // The gateway opens a tunnel for every upgrade the cleaning kept, or refuses the
        // request before it gets here.
        let upgrade = client_upgrade.is_some();
        headers::set_forwarded(request.headers_mut(), client.peer, client.cleaned);
        let sending = self
            .pool
            .send(&route.upstream, client.worker, request, upgrade);
        let sent = tokio::time::timeout(route.timeout, sending).await;
        let mut response = match sent {
            Err(_elapsed) => return Err(ProxyError::Timeout),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(response)) => response,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            match client_upgrade {
                Some(client_side) => tunnel(client_side, hyper::upgrade::on(&mut response)),
                // A 101 to a request that asked for no upgrade breaks HTTP framing.
                None => return Err(ProxyError::Broken),
            }
        }
        Ok(response.map(Either::Left))
    }
}

/// The normalised path and the query exactly as the client sent it, in origin form
/// (`/path?query`): what an HTTP/1.1 request line to an origin server carries.
fn origin_form(path: &str, original: &Uri) -> Result<Uri, ProxyError> {
    let unchanged = original.authority().is_none() && original.path() == path;
    if unchanged {
        // Nearly every request: its target is already normal, so no new string is built.
        return Ok(original.clone());
    }
    let path_and_query = match original.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::Target)?;
    Ok(Uri::from(path_and_query))
}

/// Copies bytes both ways between the two upgraded connections until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "tunnel closed with an error");
        }
    });
}

/// Tells the upstream's failures from the client's: an over-long or malformed body is the
/// client's fault.
fn classify(error: &SendError) -> ProxyError {
    let error = match error {
        SendError::Connect(_) => return ProxyError::Unreachable,
        SendError::Wire(_) => return ProxyError::Broken,
        SendError::Http(error) => error,
    };
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        if e.is::<crate::http1::ClientBodyError>() {
            return ProxyError::BadBody;
        }
        source = e.source();
    }
    ProxyError::Broken
}
