//! The life of one request, top to bottom: limits, path, route, policy, forwarding, and the
//! access-log line. Each step is a call into the module that owns it; this file is where a
//! reader learns what happens to a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_LENGTH, HOST, UPGRADE};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::Limited;
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::body::Body;
use crate::config::{Config, LimitsConfig, Scope};
use crate::identity::is_identity_header;
use crate::login::flow::{Access, Login, LoginSetupError};
use crate::metrics::{Metrics, RouteSeries};
use crate::pages::{self, Failure};
use crate::proxy::{self, Peer, Proxy};
use crate::route::{self, Route, RouteTable, path::NormalPath};

/// How a connection reached the gateway.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Everything a request needs, built once from the configuration.
pub struct Gate {
    routes: RouteTable,
    proxy: Proxy,
    metrics: Arc<Metrics>,
    limits: LimitsConfig,
    trusted_proxies: Vec<IpNet>,
    access_log: bool,
    /// Present when some route needs a WeChat login.
    login: Option<Login>,
    /// The configured identity header, stripped from every client request.
    identity_header: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Route(#[from] route::RouteError),
    #[error(transparent)]
    Login(#[from] LoginSetupError),
}

/// What the request turned out to be, for metrics and the access log.
enum Target<'a> {
    Route(&'a Arc<Route>),
    Endpoint,
    Unrouted,
}

impl Gate {
    pub fn new(config: &Config) -> Result<Self, GateError> {
        let routes = RouteTable::from_config(config)?;
        let metrics = Metrics::new(&routes);
        Ok(Self {
            proxy: Proxy::new(&config.upstream),
            metrics,
            routes,
            limits: config.server.limits.clone(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            access_log: config.log.access_log,
            login: if config.has_protected_routes() {
                Some(Login::new(config)?)
            } else {
                None
            },
            identity_header: config.identity.header.clone(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request; never fails, every failure becomes a page or JSON.
    pub async fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        // Kept before the request moves on: the log line and the error's format need them.
        let path = self.access_log.then(|| request.uri().path().to_owned());
        let json_errors = pages::wants_json(request.headers());
        let (target, result) = self.respond(request, conn).await;
        let response = result.unwrap_or_else(|failure| pages::render(&failure, json_errors));
        let elapsed = started.elapsed();
        let (series, label) = match target {
            Target::Route(route) => (self.metrics.route(route.index), route.label.as_str()),
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
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                peer = %conn.peer.ip(),
            );
        }
        response
    }

    async fn respond(
        &self,
        mut request: Request<Incoming>,
        conn: ConnInfo,
    ) -> (Target<'_>, Result<Response<Body>, Failure>) {
        if let Err(failure) = self.check_limits(&request) {
            return (Target::Unrouted, Err(failure));
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
        let Some(host) = request_host(&request) else {
            return (
                Target::Unrouted,
                Err(Failure::BadRequest("The request has no Host header.")),
            );
        };
        // Before anything reads them: a client must never pose as an identity.
        strip_identity_headers(request.headers_mut(), &self.identity_header);
        if path.as_str().starts_with("/_wxgate/") {
            return match &self.login {
                Some(login) => (
                    Target::Endpoint,
                    Ok(login.endpoint(path.as_str(), &request).await),
                ),
                None => (Target::Endpoint, Err(Failure::NoRoute)),
            };
        }
        let Some(route) = self.routes.route_for(Some(&host), path.as_str()) else {
            return (Target::Unrouted, Err(Failure::NoRoute));
        };
        if route.scope != Scope::Public {
            let Some(login) = &self.login else {
                return (Target::Route(route), Err(Failure::Unavailable));
            };
            match login.authenticate(&request, route).await {
                Access::Granted(identity) => {
                    let headers = request.headers_mut();
                    for (name, value) in identity {
                        headers.insert(name, value);
                    }
                }
                Access::Anonymous => {}
                Access::Respond(response) => return (Target::Route(route), Ok(response)),
            }
        }
        let client_upgrade = match upgrade_of(&request) {
            Upgrade::None => None,
            Upgrade::Refused => {
                return (
                    Target::Route(route),
                    Err(Failure::BadRequest("This protocol upgrade is not allowed.")),
                );
            }
            Upgrade::Tunnel => Some(hyper::upgrade::on(&mut request)),
        };
        let peer = self.peer(conn);
        let request = request.map(|body| Limited::new(body, self.body_limit()));
        let result = self
            .proxy
            .forward(request, route, path.as_str(), peer, client_upgrade)
            .await;
        (Target::Route(route), result)
    }

    fn check_limits(&self, request: &Request<Incoming>) -> Result<(), Failure> {
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
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_body_bytes) {
            return Err(Failure::PayloadTooLarge);
        }
        Ok(())
    }

    fn body_limit(&self) -> usize {
        usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX)
    }

    fn peer(&self, conn: ConnInfo) -> Peer {
        let ip = conn.peer.ip().to_canonical();
        Peer {
            ip,
            trusted: self.trusted_proxies.iter().any(|net| net.contains(&ip)),
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

fn upgrade_of(request: &Request<Incoming>) -> Upgrade {
    let headers = request.headers();
    if !proxy::is_upgrade(headers) {
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

/// The host a request is for: the URI's authority (HTTP/2, absolute form) or `Host`.
/// An HTTP/1.1 request without one is malformed; HTTP/1.0 may omit it.
fn request_host(request: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(route::normalize_host(authority.host()));
    }
    match request.headers().get(HOST).and_then(|v| v.to_str().ok()) {
        Some(host) => Some(route::normalize_host(host)),
        None if request.version() == Version::HTTP_10 => Some(String::new()),
        None => None,
    }
}

/// Removes the configured identity header and every `x-wechat-*` header in any spelling.
fn strip_identity_headers(headers: &mut HeaderMap, configured: &str) {
    let spoofed: Vec<http::header::HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str(), configured))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

fn record(series: &RouteSeries, response: &Response<Body>, elapsed: std::time::Duration) {
    series.record(response.status(), elapsed);
}

fn response_bytes(response: &Response<Body>) -> u64 {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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
