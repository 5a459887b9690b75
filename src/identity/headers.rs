//! Identity as headers: the optional plain `X-WeChat-*` convenience headers, and the rule
//! that decides which client-supplied headers could pose as identity and must be stripped.

use http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::claims::Claims;

pub const OPENID_HEADER: HeaderName = HeaderName::from_static("x-wechat-openid");
pub const UNIONID_HEADER: HeaderName = HeaderName::from_static("x-wechat-unionid");
pub const NICKNAME_HEADER: HeaderName = HeaderName::from_static("x-wechat-nickname");
pub const SCOPE_HEADER: HeaderName = HeaderName::from_static("x-wechat-scope");
/// `1` on every request of a 快照页 visitor, whose openid, unionid and nickname are
/// WeChat's virtual account, not the person.
pub const SNAPSHOT_HEADER: HeaderName = HeaderName::from_static("x-wechat-snapshot");

/// Everything but RFC 3986 unreserved characters is escaped, so any UTF-8 (emoji, control
/// bytes, CR/LF) becomes a safe header value that decodes back to the original.
const HEADER_VALUE_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The plain identity headers for `claims` (`identity.plain_headers`). Only the JWT is
/// authoritative; these are a convenience for upstreams that cannot verify it.
pub fn plain_headers(claims: &Claims) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![(OPENID_HEADER, encode(&claims.openid))];
    if let Some(unionid) = &claims.unionid {
        headers.push((UNIONID_HEADER, encode(unionid)));
    }
    if let Some(nickname) = &claims.nickname {
        headers.push((NICKNAME_HEADER, encode(nickname)));
    }
    headers.push((SCOPE_HEADER, encode(&claims.scope)));
    headers.extend(snapshot_header(claims));
    headers
}

/// `X-WeChat-Snapshot: 1` for a 快照页 visitor. Sent with or without `plain_headers`: an
/// upstream that only glances at headers must not take a virtual account for a person.
/// (A snapshot visitor's virtual unionid is never in `X-WeChat-UnionID`: the claims hold
/// it as `snapshot_unionid`.)
pub fn snapshot_header(claims: &Claims) -> Option<(HeaderName, HeaderValue)> {
    (claims.snapshot == Some(true)).then(|| (SNAPSHOT_HEADER, HeaderValue::from_static("1")))
}

fn encode(value: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(value, HEADER_VALUE_ESCAPES).to_string();
    // Percent-encoded text is visible ASCII, which is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a client-supplied header could pose as identity: the configured identity header
/// or any `x-wechat-*` header, compared lower-cased with `_` and `.` read as `-`, because
/// upstream frameworks (PHP, WSGI) fold those spellings into one name.
/// Runs on every header of every request, so it compares folded bytes without allocating.
pub fn is_identity_header(name: &str, configured: &str) -> bool {
    const PREFIX: &[u8] = b"x-wechat-";
    let name = name.as_bytes();
    (name.len() >= PREFIX.len() && folded_eq(&name[..PREFIX.len()], PREFIX))
        || folded_eq(name, configured.as_bytes())
}

/// Identity headers of other gateways (oauth2-proxy, Authelia, Traefik forward-auth,
/// Apache `REMOTE_USER`) and path overrides (`X-Original-URL` and kin) that upstreams once
/// placed behind such a gateway may still believe. wxgate never sets them, so a client's
/// copy, in any spelling, is always a forgery.
const FOREIGN_IDENTITY: [&[u8]; 12] = [
    b"remote-user",
    b"x-remote-user",
    b"x-forwarded-user",
    b"x-forwarded-email",
    b"x-forwarded-preferred-username",
    b"x-forwarded-groups",
    b"x-forwarded-access-token",
    b"x-authenticated-user",
    b"x-original-url",
    b"x-original-uri",
    b"x-rewrite-url",
    b"x-forwarded-uri",
];
const FOREIGN_PREFIXES: [&[u8]; 1] = [b"x-auth-request-"];

/// Whether a client-supplied header poses as another gateway's identity or path override
/// (see [`FOREIGN_IDENTITY`]), compared under the same folding as [`is_identity_header`].
pub fn is_foreign_identity_header(name: &str) -> bool {
    let name = name.as_bytes();
    FOREIGN_IDENTITY.iter().any(|known| folded_eq(name, known))
        || FOREIGN_PREFIXES
            .iter()
            .any(|prefix| name.len() >= prefix.len() && folded_eq(&name[..prefix.len()], prefix))
}

/// `a` and `b` are the same name lower-cased with `_` and `.` read as `-`.
pub fn folded_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

fn fold(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::claims;

    #[test]
    fn plain_headers_percent_encode_utf8_and_skip_unknown_unionid() {
        let mut claims = claims();
        claims.nickname = Some("小明😀\x07".into());
        claims.unionid = None;
        let headers = plain_headers(&claims);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["x-wechat-openid", "x-wechat-nickname", "x-wechat-scope"]
        );
        assert_eq!(headers[0].1, "oLVPpjqs9BhvzwPj5A-vTYAX3GLc");
        assert_eq!(headers[1].1, "%E5%B0%8F%E6%98%8E%F0%9F%98%80%07");
        assert_eq!(headers[2].1, "snsapi_userinfo");

        let decoded = percent_encoding::percent_decode_str(headers[1].1.to_str().unwrap())
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, "小明😀\x07");
    }

    #[test]
    fn plain_headers_include_unionid_when_known() {
        let headers = plain_headers(&claims());
        assert!(headers.iter().any(
            |(name, value)| name == UNIONID_HEADER && value == "o6_bmasdasdsad6_2sgVt7hMZOPfL"
        ));
    }

    #[test]
    fn identity_header_spellings_are_recognised_in_every_variant() {
        let configured = "X-WeChat-Identity";
        let cases = [
            ("X-WeChat-OpenID", true),
            ("x_wechat_openid", true),
            ("X.WeChat.OpenID", true),
            ("X-WECHAT-IDENTITY", true),
            ("x-wechat_identity", true),
            ("x.wechat-nickname", true),
            ("X-WeChat-", true),
            ("x-wechatty", false),
            ("x-wechat", false),
            ("x-forwarded-for", false),
            ("wechat-openid", false),
            ("authorization", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_identity_header(name, configured), expected, "{name}");
        }
    }

    #[test]
    fn other_gateways_identity_headers_are_recognised_in_every_spelling() {
        for name in [
            "Remote-User",
            "remote_user",
            "X-Forwarded-User",
            "x_forwarded_email",
            "X.Authenticated.User",
            "X-Auth-Request-User",
            "x_auth_request_email",
            "X-Original-URL",
            "x.forwarded.uri",
        ] {
            assert!(is_foreign_identity_header(name), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-user-agent",
            "x-auth-request",
        ] {
            assert!(!is_foreign_identity_header(name), "{name}");
        }
    }

    #[test]
    fn a_configured_header_outside_the_prefix_is_matched_under_the_same_folding() {
        let configured = "X-Gateway-Assertion";
        let cases = [
            ("x-gateway-assertion", true),
            ("X_Gateway_Assertion", true),
            ("x.gateway.assertion", true),
            ("x-gateway-assertion-for", false),
            ("x-wechat-openid", true),
        ];
        for (name, expected) in cases {
            assert_eq!(is_identity_header(name, configured), expected, "{name}");
        }
    }
}
