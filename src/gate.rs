//! The life of one request, top to bottom: limits, path, route, policy, forwarding, and the
//! access-log line. Each step is a call into the module that owns it; this file is where a
//! reader learns what happens to a request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HOST, ORIGIN, UPGRADE};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::Limited;
use ipnet::IpNet;

use crate::body::Body;
use crate::config::{LimitsConfig, Scope};
use crate::failure::Failure;
use crate::http1::ClientBody;
use crate::identity::{is_foreign_identity_header, is_identity_header};
use crate::jssdk::Jssdk;
use crate::login::{Decision, LoginSetupError, Logins, Visitor};
use crate::metrics::{Metrics, RouteMetrics, RouteSeries};
use crate::pages;
use crate::proxy::{self, Peer, Proxy};
use crate::route::{self, Route, RouteTable, path::NormalPath};

static X_FORWARDED_URI: http::HeaderName = http::HeaderName::from_static("x-forwarded-uri");

/// How a connection reached the gateway.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The worker thread serving the connection (0 without workers).
    pub worker: usize,
}

/// Everything a request needs, built once from the configuration by `app::assemble`.
pub struct Gate {
    pub(crate) routes: RouteTable,
    pub(crate) proxy: Proxy,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) route_metrics: RouteMetrics,
    pub(crate) limits: LimitsConfig,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) access_log: bool,
    /// Present when some route needs a WeChat login: `[wechat]`'s and each `[[apps]]`'.
    pub(crate) logins: Option<Logins>,
    /// The configured identity header, stripped from every client request.
    pub(crate) identity_header: String,
    /// Origins whose pages may open a WebSocket to a protected route.
    pub(crate) websocket_origins: Vec<url::Origin>,
    /// `/_wxgate/jssdk` and `/_wxgate/jssdk.js`, when some account has its AppSecret here.
    pub(crate) jssdk: Option<Jssdk>,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Route(#[from] route::RouteError),
    #[error(transparent)]
    Login(#[from] LoginSetupError),
    #[error("session store: {0}")]
    Store(crate::session::StoreOpenError),
    #[error("JS-SDK: {0}")]
    Jssdk(#[from] crate::wechat::WeChatError),
}

/// What `respond` decides, on its way.
type Responding<'a> =
    Pin<Box<dyn Future<Output = (Target<'a>, Result<Response<Body>, Failure>)> + Send + 'a>>;

/// What the request turned out to be, for metrics and the access log.
enum Target<'a> {
    Route(&'a Arc<Route>),
    Endpoint,
    Unrouted,
}

impl Gate {
    /// Answers one request; never fails, every failure becomes a page or JSON.
    pub async fn handle(&self, request: Request<ClientBody>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        // Kept before the request moves on: the log line and the error's format need them.
        let path = self.access_log.then(|| request.uri().path().to_owned());
        // Read once: failures and the login's answers are JSON for scripts, pages otherwise.
        let script = pages::wants_json(request.headers());
        let (target, result) = self.respond_boxed(request, conn, script).await;
        let response = result.unwrap_or_else(|failure| pages::render(&failure, script));
        let elapsed = started.elapsed();
        let (series, label) = match target {
            Target::Route(route) => (self.route_metrics.route(route.index), route.label.as_str()),
            Target::Endpoint => (&self.metrics.endpoints, "_wxgate"),
            Target::Unrouted => (&self.metrics.unrouted, "-"),
        };
        record(series, &response, elapsed);
        if let Some(path) = path {
            // The path only: queries carry WeChat's `code` and `state` on the callback.
            tracing::info!(
                target: "wxgate::access",
                method = %method,
                path = %truncate(&path, 256),
                route = label,
                status = response.status().as_u16(),
                bytes = response_bytes(&response),
                duration_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
                peer = %conn.peer.ip(),
            );
        }
        response
    }

    /// `respond`, built straight into its box by this plain function. Awaited inline, its
    /// several KiB of state would be laid out again in `handle`'s future and in each caller's
    /// (rustc keeps an awaited future's bytes beside the caller's own), allocated and copied
    /// at every level on every request; boxed here, the futures above it stay small enough
    /// for the allocator's per-thread cache.
    fn respond_boxed(
        &self,
        request: Request<ClientBody>,
        conn: ConnInfo,
        script: bool,
    ) -> Responding<'_> {
        Box::pin(self.respond(request, conn, script))
    }

    async fn respond(
        &self,
        mut request: Request<ClientBody>,
        conn: ConnInfo,
        script: bool,
    ) -> (Target<'_>, Result<Response<Body>, Failure>) {
        if let Err(failure) = self.check_limits(&request) {
            return (Target::Unrouted, Err(failure));
        }
        if request.method() == http::Method::CONNECT {
            return (Target::Unrouted, Err(Failure::MethodNotAllowed));
        }
        let path = match NormalPath::parse(request.uri().path()) {
            Ok(path) => path,
            Err(e) => {
                tracing::debug!(reason = %e, "path refused");
                return (
                    Target::Unrouted,
                    Err(Failure::BadRequest(
                        "The address of this request is not allowed.",
                    )),
                );
            }
        };
        let host = match request_host(&request) {
            Ok(host) => host,
            Err(reason) => return (Target::Unrouted, Err(Failure::BadRequest(reason))),
        };
        let peer = self.peer(conn);
        // Before anything reads them: a client must never pose as an identity, nor say where
        // it came from unless it is a trusted proxy. A proxy in front that asks
        // `/_wxgate/auth` or `/_wxgate/start` names the page to return to in X-Forwarded-Uri;
        // believed from trusted peers only, and only on the gateway's own endpoints, which
        // forward nothing.
        let endpoint = path.as_str().starts_with("/_wxgate/");
        let keeps_return_page = peer.trusted && endpoint;
        let configured = self.identity_header.as_str();
        let cleaned = proxy::clean_request(request.headers_mut(), peer.trusted, |name| {
            !(keeps_return_page && name == X_FORWARDED_URI.as_str())
                && (is_identity_header(name, configured) || is_foreign_identity_header(name))
        });
        if endpoint {
            let visitor = self.visitor(&request, peer, script, cleaned);
            return (
                Target::Endpoint,
                self.endpoint(&path, &request, &visitor).await,
            );
        }
        let Some(route) = self.routes.route_for(Some(&host), path.as_str()) else {
            return (Target::Unrouted, Err(Failure::NoRoute));
        };
        if route.scope != Scope::Public {
            if let Err(failure) = self.check_websocket_origin(request.headers(), cleaned) {
                return (Target::Route(route), Err(failure));
            }
            let Some(login) = self.logins.as_ref().and_then(|l| l.for_route(route)) else {
                return (Target::Route(route), Err(Failure::Unavailable));
            };
            let visitor = self.visitor(&request, peer, script, cleaned);
            match login.authenticate(&visitor, &request, route).await {
                Decision::Grant(identity) => {
                    let headers = request.headers_mut();
                    for (name, value) in identity {
                        headers.insert(name, value);
                    }
                }
                Decision::Anonymous => {}
                Decision::Answer(answer) => {
                    return (Target::Route(route), Ok(pages::answer(*answer, script)));
                }
            }
        }
        for login in self.logins.iter().flat_map(Logins::all) {
            login.remove_own_cookies(request.headers_mut());
        }
        let client_upgrade = match upgrade_of(&request, cleaned) {
            Upgrade::None => None,
            Upgrade::Refused => {
                return (
                    Target::Route(route),
                    Err(Failure::BadRequest("This protocol upgrade is not allowed.")),
                );
            }
            Upgrade::Tunnel => Some(hyper::upgrade::on(&mut request)),
        };
        let request = request.map(|body| Limited::new(body, self.body_limit()));
        let mut result = self
            .proxy
            .forward(
                request,
                route,
                path.as_str(),
                proxy::Client {
                    peer,
                    worker: conn.worker,
                    cleaned,
                },
                client_upgrade,
            )
            .await
            .map_err(Failure::from);
        if let Ok(response) = &mut result {
            for login in self.logins.iter().flat_map(Logins::all) {
                login.strip_own_cookies(response.headers_mut());
            }
        }
        (Target::Route(route), result)
    }

    /// The gateway's own endpoints under `/_wxgate/`: the JS-SDK's, and the login's of the
    /// account the request names.
    async fn endpoint(
        &self,
        path: &NormalPath,
        request: &Request<ClientBody>,
        visitor: &Visitor<'_>,
    ) -> Result<Response<Body>, Failure> {
        let path = path.as_str();
        if let Some(jssdk) = self.jssdk.as_ref().filter(|_| Jssdk::serves(path)) {
            return Ok(Box::pin(jssdk.endpoint(path, request)).await);
        }
        let login = self
            .logins
            .as_ref()
            .and_then(|logins| logins.for_endpoint(path, request.uri().query()))
            .ok_or(Failure::NoRoute)?;
        // Boxed: the login endpoints' futures (code exchange, profile, store) are large, and
        // unboxed they would size every proxied request's future, which is moved and copied
        // as a whole.
        let answer = Box::pin(login.endpoint(path, visitor, request)).await;
        Ok(pages::answer(answer, visitor.script))
    }

    fn check_limits(&self, request: &Request<ClientBody>) -> Result<(), Failure> {
        let limits = &self.limits;
        let target_len = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
        if target_len > limits.max_uri_bytes {
            return Err(Failure::UriTooLong);
        }
        let headers = request.headers();
        if headers.len() > limits.max_headers {
            return Err(Failure::HeadersTooLarge);
        }
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > limits.max_header_bytes {
            return Err(Failure::HeadersTooLarge);
        }
        let declared = crate::http1::content_length(headers);
        if declared.is_some_and(|len| len > limits.max_body_bytes) {
            return Err(Failure::PayloadTooLarge);
        }
        Ok(())
    }

    fn body_limit(&self) -> usize {
        usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX)
    }

    /// A WebSocket handshake carries the visitor's cookies whichever page opened it, so on a
    /// protected route the opening page must be one of ours (cross-site WebSocket
    /// hijacking). Clients that send no `Origin` are not browsers and are let through.
    fn check_websocket_origin(
        &self,
        headers: &HeaderMap,
        cleaned: proxy::Cleaned,
    ) -> Result<(), Failure> {
        if !cleaned.upgrade() {
            return Ok(());
        }
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(());
        };
        let allowed = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .is_some_and(|o| self.websocket_origins.contains(&o.origin()));
        if allowed {
            Ok(())
        } else {
            tracing::info!("WebSocket upgrade from a foreign origin refused");
            Err(Failure::Forbidden(
                "This page may not open a connection here.",
            ))
        }
    }

    /// Who the login is asked about: the client's address, from what the gate has already
    /// read of the request (whether it is a script, whether it asks for an upgrade).
    fn visitor<'r>(
        &self,
        request: &'r Request<ClientBody>,
        peer: Peer,
        script: bool,
        cleaned: proxy::Cleaned,
    ) -> Visitor<'r> {
        let ip = self.client_ip(peer, request.headers());
        Visitor::new(
            ip,
            request.method(),
            request.headers(),
            script,
            cleaned.upgrade(),
        )
    }

    /// The client behind the connection: the peer, or when the peer is a trusted proxy the
    /// right-most `X-Forwarded-For` address that is not itself a trusted proxy.
    fn client_ip(&self, peer: Peer, headers: &HeaderMap) -> std::net::IpAddr {
        let mut client = peer.ip;
        if !peer.trusted {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            if !self.is_trusted(client) {
                break;
            }
            match hop.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => client = ip.to_canonical(),
                Err(_) => break,
            }
        }
        client
    }

    fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    fn peer(&self, conn: ConnInfo) -> Peer {
        let ip = conn.peer.ip().to_canonical();
        Peer {
            ip,
            trusted: self.is_trusted(ip),
            tls: conn.tls,
        }
    }
}

enum Upgrade {
    None,
    Tunnel,
    /// `h2c` upgrades smuggle a second protocol past the gateway's view of the requests.
    Refused,
}

fn upgrade_of(request: &Request<ClientBody>, cleaned: proxy::Cleaned) -> Upgrade {
    let headers = request.headers();
    if !cleaned.upgrade() {
        return Upgrade::None;
    }
    let h2c = headers.get_all(UPGRADE).iter().any(|v| {
        v.to_str()
            .map_or(true, |s| s.to_ascii_lowercase().contains("h2c"))
    });
    if h2c {
        Upgrade::Refused
    } else {
        Upgrade::Tunnel
    }
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The host a request is for: the URI's authority (HTTP/2, absolute form) or `Host`.
/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one valid `Host` is malformed (HTTP/1.0
/// may omit it); and where both exist they must name the same host, or routing and the
/// upstream would read different ones.
fn request_host(request: &Request<ClientBody>) -> Result<String, &'static str> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("The request has more than one Host header.");
    }
    let header = match header {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|h| is_valid_host_header(h))
                .ok_or("The Host header is not a valid host.")?,
        ),
        None => None,
    };
    match (request.uri().authority(), header) {
        (Some(authority), Some(header)) => {
            let target = route::normalize_host(authority.host());
            if target == route::normalize_host(header) {
                Ok(target)
            } else {
                Err("The Host header and the request target name different hosts.")
            }
        }
        (Some(authority), None) => Ok(route::normalize_host(authority.host())),
        (None, Some(header)) => Ok(route::normalize_host(header)),
        (None, None) if request.version() == Version::HTTP_10 => Ok(String::new()),
        (None, None) => Err("The request has no Host header."),
    }
}

/// `host[:port]`: a registered name or IPv4 address, or a bracketed IPv6 literal.
fn is_valid_host_header(value: &str) -> bool {
    let (host_ok, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            if !(after.is_empty() || after.starts_with(':')) {
                return false;
            }
            (
                v6.parse::<std::net::Ipv6Addr>().is_ok(),
                after.strip_prefix(':'),
            )
        }
        None => {
            let (host, port) = match value.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (value, None),
            };
            let name_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            (name_ok, port)
        }
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn record(series: &RouteSeries, response: &Response<Body>, elapsed: std::time::Duration) {
    series.record(response.status(), elapsed);
}

/// The body's length: its `Content-Length`, else the exact size the body knows (the
/// gateway's own pages, whose length hyper writes only later). 0 for a body of unknown size
/// (a streamed upstream body without a length).
fn response_bytes(response: &Response<Body>) -> u64 {
    crate::http1::content_length(response.headers())
        .or_else(|| http_body::Body::size_hint(response.body()).exact())
        .unwrap_or(0)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::is_valid_host_header;

    #[test]
    fn host_headers_must_be_a_host_and_an_optional_port() {
        for good in [
            "m.example.com",
            "m.example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "a_b.local",
        ] {
            assert!(is_valid_host_header(good), "{good}");
        }
        for bad in [
            "",
            "gw.test:abc",
            "gw.test:",
            "gw.test:123456",
            "a b",
            "a/b",
            "evil.com@gw.test",
            "[::1",
            "[zz]",
            "[::1]x",
            "gw.test:80:80",
            "gw.test\\x",
        ] {
            assert!(!is_valid_host_header(bad), "{bad}");
        }
    }
}
