//! Forwarding to upstreams: keep-alive connections per worker, bodies streamed both ways,
//! hop-by-hop headers removed, `X-Forwarded-*` set, and `Upgrade` requests (WebSocket)
//! tunnelled once the upstream has said 101.

mod pool;
mod wire;

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::pages::Failure;
use crate::route::Route;
pub use pool::PooledBody;
use pool::{Pool, SendError};

/// The body sent upstream: the client's, cut off at `server.limits.max_body_bytes`.
pub type UpstreamBody = Limited<Incoming>;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
/// `Trailer` is not among them: hyper only sends trailer fields that `Trailer` declares.
/// A `static`, not a `const`: a const array of header names is built and dropped at each use.
/// `Connection` first: `strip_hop_by_hop` reads its bit as bit 0.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How the client reached the gateway, for the forwarded headers.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    /// The direct peer is a trusted proxy: its `X-Forwarded-*` are kept and extended.
    pub trusted: bool,
    pub tls: bool,
}

pub struct Proxy {
    pool: Arc<Pool>,
}

impl Proxy {
    /// `workers`: the worker threads that will forward requests, each keeping its own
    /// upstream connections.
    pub fn new(config: &UpstreamConfig, workers: usize) -> Self {
        Self {
            pool: Pool::new(config, workers),
        }
    }

    /// Sends `request` to the route's upstream and returns its response, or the failure to
    /// show. `worker` is the worker thread serving the request: it lends the connection.
    pub async fn forward(
        &self,
        mut request: Request<UpstreamBody>,
        route: &Route,
        path: &str,
        (peer, worker): (Peer, usize),
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, Failure> {
        if !request.headers().contains_key(header::HOST) {
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
        *request.uri_mut() = origin_form(path, request.uri())?;
        *request.version_mut() = http::Version::HTTP_11;
        let upgrade = client_upgrade.is_some();
        prepare_request_headers(request.headers_mut(), peer, upgrade);
        let sending = self.pool.send(&route.upstream, worker, request);
        let sent = tokio::time::timeout(route.timeout, sending).await;
        let mut response = match sent {
            Err(_elapsed) => return Err(Failure::UpstreamTimeout),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(response)) => response,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            match client_upgrade {
                Some(client_side) => tunnel(client_side, hyper::upgrade::on(&mut response)),
                // A 101 to a request that asked for no upgrade breaks HTTP framing.
                None => return Err(Failure::UpstreamFailed),
            }
        }
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(response.headers_mut(), switching);
        Ok(response.map(Either::Left))
    }
}

/// The normalised path and the query exactly as the client sent it, in origin form
/// (`/path?query`): what an HTTP/1.1 request line to an origin server carries.
fn origin_form(path: &str, original: &Uri) -> Result<Uri, Failure> {
    let unchanged = original.authority().is_none() && original.path() == path;
    if unchanged {
        // Nearly every request: its target is already normal, so no new string is built.
        return Ok(original.clone());
    }
    let path_and_query = match original.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| Failure::BadRequest("The request target cannot be forwarded."))?;
    Ok(Uri::from(path_and_query))
}

/// Strips what belongs to the client's connection, then writes the gateway's own headers,
/// in that order, so a `Connection: x-forwarded-for` cannot delete what the gateway adds.
fn prepare_request_headers(headers: &mut HeaderMap, peer: Peer, upgrade: bool) {
    let wants_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("trailers"))
    });
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers, false);
    headers.remove(header::TE);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded(headers, peer);
}

fn set_forwarded(headers: &mut HeaderMap, peer: Peer) {
    let ip = ip_text(peer.ip);
    let xff = match (peer.trusted, joined(headers, &X_FORWARDED_FOR)) {
        (true, Some(previous)) => format!("{previous}, {ip}"),
        _ => ip,
    };
    let proto = if peer.tls { "https" } else { "http" };
    let host = headers.get(header::HOST).cloned();
    if !peer.trusted {
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(header::FORWARDED);
    }
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Removes the headers a client's `Connection` names, and keeps of `Connection` only its
/// `upgrade` token. Runs on the inbound request before the gateway adds identity headers,
/// so `Connection: close, X-WeChat-Identity` cannot delete the gateway's own (Traefik
/// CVE-2021-32813, CVE-2024-45410).
pub fn drop_connection_options(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let upgrade = is_upgrade(headers);
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| name != header::UPGRADE)
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Headers that say where a request came from. Only a trusted proxy may send them; from
/// anyone else every spelling goes, and the gateway writes its own `X-Forwarded-*`.
const FORWARDING: [&[u8]; 13] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"x-forwarded-server",
    b"x-forwarded-ssl",
    b"x-real-ip",
    b"forwarded",
    b"true-client-ip",
    b"cf-connecting-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
];

/// Removes client-supplied forwarding headers: all of them from an untrusted peer; from a
/// trusted proxy only the `_`/`.` spellings (`X_Forwarded_For`), which no proxy writes but
/// PHP and WSGI upstreams read as the real one.
pub fn strip_client_forwarding(headers: &mut HeaderMap, trusted: bool) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let raw = name.as_str().as_bytes();
            FORWARDING
                .iter()
                .any(|known| crate::identity::folded_eq(raw, known) && (!trusted || raw != *known))
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// The peer's address as text. `Ipv4Addr`'s `Display` goes through the padding-aware
/// formatter (some 1 300 instructions a request); four small numbers by hand cost a tenth.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// All values of a header joined with ", ", as a list header is meant to be read.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Removes the hop-by-hop headers and every header the `Connection` header names.
/// A 101 keeps `Upgrade` and `Connection`, which the client needs to switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, switching: bool) {
    // One pass over the few names present finds which hop-by-hop headers there are (as a
    // bit per entry of HOP_BY_HOP); removing every name of the list would hash each (14
    // lookups a request), where a typical upstream response carries only `Connection`.
    let present = headers.keys().fold(0u8, |bits, name| {
        match HOP_BY_HOP.iter().position(|hop| hop == name) {
            Some(i) => bits | 1 << i,
            None => bits,
        }
    });
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` (bit 0) names more headers to drop. `keep-alive`, what nearly every
        // upstream names, is in the fixed list anyway; skipping it here leaves this list
        // empty and unallocated.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| !token.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            if !(switching && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = switching && (name == header::UPGRADE || name == header::CONNECTION);
        if present & 1 << i != 0 && !kept {
            headers.remove(name);
        }
    }
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

/// Maps a client error to what the visitor sees; an over-long body is the client's fault.
fn classify(error: &SendError) -> Failure {
    let error = match error {
        SendError::Connect(_) => return Failure::UpstreamUnreachable,
        SendError::Wire(_) => return Failure::UpstreamFailed,
        SendError::Http(error) => error,
    };
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return Failure::PayloadTooLarge;
        }
        source = e.source();
    }
    Failure::UpstreamFailed
}

/// True when the client asks to switch protocols on this HTTP/1.1 request.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// A client at `ip`, trusted as a proxy or not, over TLS or not.
    fn peer(ip: [u8; 4], trusted: bool, tls: bool) -> Peer {
        Peer {
            ip: ip.into(),
            trusted,
            tls,
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        let peer = peer([10, 0, 0, 1], false, false);
        prepare_request_headers(&mut h, peer, false);
        for gone in [
            "connection",
            "keep-alive",
            "x-secret-hop",
            "proxy-authorization",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn connection_options_go_before_the_gateway_adds_its_headers() {
        let mut h = map(&[
            ("connection", "close, X-WeChat-Identity, x-secret"),
            ("x-secret", "1"),
            ("x-wechat-identity", "forged"),
        ]);
        drop_connection_options(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        drop_connection_options(&mut ws);
        assert_eq!(ws["connection"], "upgrade");
        assert_eq!(ws["upgrade"], "websocket");
    }

    #[test]
    fn connection_cannot_delete_the_gateways_own_headers() {
        let mut h = map(&[
            ("connection", "x-forwarded-for, x-forwarded-proto"),
            ("host", "m.example.com"),
        ]);
        let peer = peer([10, 0, 0, 1], false, true);
        prepare_request_headers(&mut h, peer, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "m.example.com");
    }

    #[test]
    fn forwarded_headers_of_untrusted_peers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("host", "m.example.com"),
        ]);
        prepare_request_headers(&mut h, peer([10, 0, 0, 1], false, false), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "m.example.com");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn client_forwarding_headers_go_in_every_spelling_unless_a_trusted_proxy_wrote_them() {
        let sent = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x.real.ip", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/public"),
            ("true-client-ip", "6.6.6.6"),
            ("x-kept", "yes"),
        ];
        let mut untrusted = map(&sent);
        strip_client_forwarding(&mut untrusted, false);
        let names: Vec<&str> = untrusted.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
        let mut trusted = map(&sent);
        strip_client_forwarding(&mut trusted, true);
        for gone in ["x_forwarded_for", "x.real.ip"] {
            assert!(!trusted.contains_key(gone), "{gone}");
        }
        for kept in [
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-port",
            "true-client-ip",
        ] {
            assert!(trusted.contains_key(kept), "{kept}");
        }
    }

    #[test]
    fn forwarded_for_of_trusted_peers_is_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "m.example.com"),
        ]);
        prepare_request_headers(&mut h, peer([10, 0, 0, 1], true, false), false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn te_trailers_survives_and_upgrade_is_kept_when_tunnelling() {
        let mut h = map(&[
            ("te", "trailers, deflate"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
        ]);
        prepare_request_headers(&mut h, peer([127, 0, 0, 1], false, false), true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn peer_addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "192.168.100.200",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn keep_alive_and_the_headers_connection_names_go_from_responses() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
        let mut switching = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut switching, true);
        assert_eq!(switching.len(), 2);
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        assert!(is_upgrade(&map(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade")
        ])));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "upgrade")])));
    }
}
