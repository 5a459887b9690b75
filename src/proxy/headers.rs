//! What of a client's request crosses the gateway: the fields that describe one connection
//! go (RFC 9110 §7.6.1; which fields those are is `http1::hop`'s to say, for requests,
//! responses and trailers alike), a client's forwarding and identity claims go, and the
//! gateway writes its own `X-Forwarded-*`.
//!
//! A client's request is cleaned in one pass over its field names ([`clean_request`]): each
//! name is looked at once and only the fields actually present are removed, where removing
//! every name of every list would hash each of them on every request.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use super::Peer;
use crate::http1::hop::{self, Token};
use crate::identity::folded_eq;

/// Bits of `Cleaned::found` beyond the hop-by-hop fields' own (`hop::bit`).
const HOST: u16 = 1 << 8;
const PRIOR_FOR: u16 = 1 << 9;
const PRIOR_PROTO: u16 = 1 << 10;
const PRIOR_HOST: u16 = 1 << 11;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// A client's request once cleaned: what is left of its connection and forwarding fields.
/// Only [`clean_request`] makes one, so a request carrying it has been cleaned.
#[derive(Debug, Clone, Copy)]
pub struct Cleaned {
    found: u16,
    upgrade: bool,
}

impl Cleaned {
    /// The client asks to switch protocols: `Upgrade` and `Connection: upgrade` were kept.
    pub fn upgrade(&self) -> bool {
        self.upgrade
    }

    /// The request carries a `Host` field.
    pub fn has_host(&self) -> bool {
        self.found & HOST != 0
    }
}

/// What one field name is to the cleaning pass.
enum Field {
    /// A bit of `Cleaned::found`: a hop-by-hop field, `Host`, or a trusted proxy's
    /// forwarding field.
    Found(u16),
    /// A forwarding field the client may not send, in any spelling.
    Spoofed,
    Other,
}

fn field(name: &str, trusted: bool) -> Field {
    if let Some(bit) = hop::bit(name) {
        return Field::Found(bit);
    }
    let bit = match name {
        "host" => HOST,
        "x-forwarded-for" if trusted => PRIOR_FOR,
        "x-forwarded-proto" if trusted => PRIOR_PROTO,
        "x-forwarded-host" if trusted => PRIOR_HOST,
        _ => return spoofing(name.as_bytes(), trusted),
    };
    Field::Found(bit)
}

/// A forwarding field: all of them from an untrusted peer; from a trusted proxy only the
/// `_`/`.` spellings (`X_Forwarded_For`), which no proxy writes but PHP and WSGI upstreams
/// read as the real one. Names in a `HeaderMap` are lower-case already.
fn spoofing(name: &[u8], trusted: bool) -> Field {
    let spoofed = FORWARDING
        .iter()
        .any(|known| folded_eq(name, known) && (!trusted || name != *known));
    if spoofed {
        Field::Spoofed
    } else {
        Field::Other
    }
}

/// Cleans a client's request before anything reads it, in one pass over its names:
/// - the headers its `Connection` names, then every hop-by-hop field, go; `Upgrade` and
///   `Connection: upgrade` stay on a request that asks to switch protocols, and `TE` is
///   kept only as `trailers`;
/// - forwarding fields go, unless a trusted proxy sent them in their usual spelling;
/// - names `forged` says the client may not send (identity headers) go.
///
/// Connection options go before the gateway adds its own headers, so `Connection: close,
/// X-WeChat-Identity` cannot delete them (Traefik CVE-2021-32813, CVE-2024-45410).
pub fn clean_request(
    headers: &mut HeaderMap,
    trusted: bool,
    forged: impl Fn(&str) -> bool,
) -> Cleaned {
    let mut found = 0u16;
    // Allocated only when a client sends what it may not: nearly never.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        match field(name.as_str(), trusted) {
            Field::Found(bit) => found |= bit,
            Field::Spoofed => doomed.push(name.clone()),
            Field::Other if forged(name.as_str()) => doomed.push(name.clone()),
            Field::Other => {}
        }
    }
    let mut asks_upgrade = false;
    if found & hop::CONNECTION != 0 {
        for value in headers.get_all(header::CONNECTION) {
            for token in hop::connection(value.as_bytes()) {
                if token == Token::Upgrade {
                    asks_upgrade = true;
                    continue;
                }
                // `contains_key` first: `close`, the usual option, names no field, and an
                // owned name of it would be an allocation.
                let named = token.names().filter(|named| headers.contains_key(*named));
                if let Some(name) = named.and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok()) {
                    if let Field::Found(bit) = field(name.as_str(), trusted) {
                        found &= !bit;
                    }
                    doomed.push(name);
                }
            }
        }
    }
    let upgrade = asks_upgrade && found & hop::UPGRADE != 0;
    let wants_trailers = found & hop::TE != 0
        && headers
            .get_all(header::TE)
            .iter()
            .any(|value| hop::accepts_trailers(value.as_bytes()));
    for name in doomed {
        headers.remove(name);
    }
    hop::remove(headers, found & hop::ALL, upgrade);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Cleaned { found, upgrade }
}

/// Joins several `Cookie` fields into one, with `"; "` (RFC 9113 §8.2.3): an HTTP/2 client
/// sends each cookie as a field of its own, and an HTTP/1.1 upstream reads only one.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Writes the gateway's `X-Forwarded-For`, `-Proto` and `-Host` on a cleaned request: a
/// trusted proxy's are extended or kept, anyone else's are gone already.
pub fn set_forwarded(headers: &mut HeaderMap, peer: Peer, cleaned: Cleaned) {
    let ip = ip_text(peer.ip);
    let previous = (cleaned.found & PRIOR_FOR != 0)
        .then(|| joined(headers, &X_FORWARDED_FOR))
        .flatten();
    let xff = match previous {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if cleaned.found & PRIOR_PROTO == 0 {
        let proto = if peer.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if cleaned.found & PRIOR_HOST == 0 {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::fields as map;

    /// A client at `ip`, trusted as a proxy or not, over TLS or not.
    fn peer(ip: [u8; 4], trusted: bool, tls: bool) -> Peer {
        Peer {
            ip: ip.into(),
            trusted,
            tls,
        }
    }

    fn clean(h: &mut HeaderMap, trusted: bool) -> Cleaned {
        clean_request(h, trusted, |name| name.starts_with("x-wechat-"))
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        let cleaned = clean(&mut h, false);
        assert_eq!(names(&h), ["x-kept"]);
        assert!(
            !cleaned.upgrade(),
            "Upgrade without Connection: upgrade is no upgrade"
        );
    }

    #[test]
    fn connection_options_go_before_the_gateway_adds_its_headers() {
        let mut h = map(&[
            ("connection", "close, X-WeChat-Identity, x-secret"),
            ("x-secret", "1"),
            ("x-wechat-identity", "forged"),
        ]);
        clean(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(clean(&mut ws, false).upgrade());
        assert_eq!(ws["connection"], "upgrade");
        assert_eq!(ws["upgrade"], "websocket");
    }

    #[test]
    fn upgrades_need_both_fields() {
        for (pairs, upgrade) in [
            (
                &[("upgrade", "websocket"), ("connection", "Upgrade")][..],
                true,
            ),
            (&[("upgrade", "websocket")][..], false),
            (&[("connection", "upgrade")][..], false),
            (
                &[("connection", "upgrade, upgrade"), ("upgrade", "h2c")][..],
                true,
            ),
        ] {
            let mut h = map(pairs);
            assert_eq!(clean(&mut h, false).upgrade(), upgrade, "{pairs:?}");
            assert_eq!(h.contains_key("upgrade"), upgrade, "{pairs:?}");
            assert_eq!(h.contains_key("connection"), upgrade, "{pairs:?}");
        }
    }

    #[test]
    fn connection_cannot_delete_the_gateways_own_headers() {
        for trusted in [false, true] {
            let mut h = map(&[
                ("connection", "x-forwarded-for, X-Forwarded-Proto, host"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "http"),
                ("host", "m.example.com"),
            ]);
            let cleaned = clean(&mut h, trusted);
            assert!(h.is_empty(), "{h:?}");
            assert!(!cleaned.has_host());
            h.insert(header::HOST, HeaderValue::from_static("up.example"));
            set_forwarded(&mut h, peer([10, 0, 0, 1], trusted, true), cleaned);
            assert_eq!(h["x-forwarded-for"], "10.0.0.1");
            assert_eq!(h["x-forwarded-proto"], "https");
            assert_eq!(h["x-forwarded-host"], "up.example");
        }
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
        let cleaned = clean(&mut h, false);
        assert!(cleaned.has_host());
        set_forwarded(&mut h, peer([10, 0, 0, 1], false, false), cleaned);
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
        clean(&mut untrusted, false);
        assert_eq!(names(&untrusted), ["x-kept"]);
        let mut trusted = map(&sent);
        clean(&mut trusted, true);
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
    fn names_the_caller_forbids_go_even_from_trusted_proxies() {
        let mut h = map(&[
            ("x-wechat-openid", "forged"),
            ("x-wechat-nickname", "forged"),
            ("x-kept", "yes"),
        ]);
        clean(&mut h, true);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn forwarded_for_of_trusted_peers_is_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "front.example"),
            ("host", "m.example.com"),
        ]);
        let cleaned = clean(&mut h, true);
        set_forwarded(&mut h, peer([10, 0, 0, 1], true, false), cleaned);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "front.example");
    }

    #[test]
    fn te_survives_only_as_trailers() {
        let mut h = map(&[("te", "deflate, Trailers")]);
        clean(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "deflate")]);
        clean(&mut h, false);
        assert!(h.is_empty());
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        clean(&mut h, false);
        assert!(h.is_empty(), "Connection may name TE: {h:?}");
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
}
