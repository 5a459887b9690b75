//! The fields that describe one connection, never the message (RFC 9110 §7.6.1), and what
//! a `Connection` field's elements mean: the one list and the one reading of them, for the
//! lane, the wire, hyper's paths and trailer filtering alike.
//!
//! A field one path removes and another passes is how identity headers get spoofed and
//! connections get poisoned; with one list, every path drops the same fields.

use http::HeaderMap;
use http::header::{self, HeaderName};

use super::head::{lists, tokens};

/// Fields that describe one connection, never the message. `Trailer` is not among them:
/// hyper only sends trailer fields that `Trailer` declares. Their index is their bit in a
/// set of [`bit`]s. A `static`, not a `const`: a const array of header names is built and
/// dropped at each use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
];
/// `Connection`'s bit.
pub(crate) const CONNECTION: u16 = 1;
/// `Upgrade`'s bit.
pub(crate) const UPGRADE: u16 = 1 << 1;
/// `TE`'s bit.
pub(crate) const TE: u16 = 1 << 2;
/// Every hop-by-hop bit.
pub(crate) const ALL: u16 = (1 << HOP_BY_HOP.len()) - 1;

/// A hop-by-hop field's bit, from its (lower-case) name: a `match` on the text, cheaper than
/// comparing header names.
pub(crate) fn bit(name: &str) -> Option<u16> {
    Some(match name {
        "connection" => CONNECTION,
        "upgrade" => UPGRADE,
        "te" => TE,
        "keep-alive" => 1 << 3,
        "proxy-authenticate" => 1 << 4,
        "proxy-authorization" => 1 << 5,
        "proxy-connection" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        _ => return None,
    })
}

/// A field that describes one connection only.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes the hop-by-hop fields whose bits are set; `Upgrade` stays when switching.
pub(crate) fn remove(headers: &mut HeaderMap, present: u16, switching: bool) {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 && !(switching && *name == header::UPGRADE) {
            headers.remove(name);
        }
    }
}

/// One element of a `Connection` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Close,
    KeepAlive,
    Upgrade,
    /// Anything else: the name of a field that goes with the connection.
    Other(&'a [u8]),
}

impl<'a> Token<'a> {
    /// The field this element names, to remove with the connection's own fields:
    /// every element but `keep-alive`, which names a field that is hop-by-hop anyway.
    pub(crate) fn names(self) -> Option<&'a str> {
        let bytes: &[u8] = match self {
            Token::KeepAlive => return None,
            Token::Close => b"close",
            Token::Upgrade => b"upgrade",
            Token::Other(name) => name,
        };
        std::str::from_utf8(bytes).ok()
    }
}

/// The elements of one `Connection` value, empty ones left out.
pub(crate) fn connection(value: &[u8]) -> impl Iterator<Item = Token<'_>> {
    tokens(value).filter(|t| !t.is_empty()).map(|t| {
        if t.eq_ignore_ascii_case(b"close") {
            Token::Close
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            Token::KeepAlive
        } else if t.eq_ignore_ascii_case(b"upgrade") {
            Token::Upgrade
        } else {
            Token::Other(t)
        }
    })
}

/// Whether a `TE` value accepts trailer fields, the one `TE` element that crosses a hop.
pub(crate) fn accepts_trailers(value: &[u8]) -> bool {
    lists(value, b"trailers")
}

/// Removes every field one `Connection` value names; `Upgrade` stays when switching.
/// Looked up by text, so a named field that is absent costs no allocation.
pub(crate) fn remove_named(headers: &mut HeaderMap, value: &[u8], switching: bool) {
    for token in connection(value) {
        if switching && token == Token::Upgrade {
            continue;
        }
        if let Some(name) = token.names() {
            headers.remove(name);
        }
    }
}

/// Removes the hop-by-hop fields of a response, and every field its `Connection` names. A
/// 101 keeps `Upgrade` and `Connection`, which the client needs to switch protocols.
pub(crate) fn strip_response(headers: &mut HeaderMap, switching: bool) {
    let present = headers.keys().fold(0u16, |bits, name| {
        bits | bit(name.as_str()).unwrap_or_default()
    });
    if present == 0 {
        return;
    }
    if present & CONNECTION != 0 {
        // Copies of the values (a reference count each): removing borrows the map.
        let values: Vec<_> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in values {
            remove_named(headers, value.as_bytes(), switching);
        }
    }
    let kept = if switching { CONNECTION } else { 0 };
    remove(headers, present & !kept, switching);
}

/// Fields that have no business in a trailer section (RFC 9110 §6.5.1): framing, routing,
/// authentication, cookies, caching and the content's own description. An upstream's
/// trailer with one of them is dropped, so a trailer cannot do what the header cleaning
/// forbids (set the gateway's session cookie, reframe the body).
static NOT_IN_TRAILERS: [HeaderName; 17] = [
    header::TRAILER,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::HOST,
    header::SET_COOKIE,
    header::COOKIE,
    header::AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::AGE,
    header::DATE,
    header::LOCATION,
    header::VARY,
    header::RETRY_AFTER,
];

/// Removes from an upstream's trailer fields every hop-by-hop field and every field a
/// trailer may not carry (`NOT_IN_TRAILERS`). Nearly every trailer section is empty or one
/// checksum, so this allocates only when something goes.
pub(crate) fn clean_trailers(trailers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| is_hop_by_hop(name) || NOT_IN_TRAILERS.contains(name))
        .cloned()
        .collect();
    for name in doomed {
        trailers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::fields as map;

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn every_hop_by_hop_name_has_its_bit() {
        let mut seen = 0;
        for name in &HOP_BY_HOP {
            let bit = bit(name.as_str()).unwrap();
            assert_eq!(seen & bit, 0, "{name}");
            seen |= bit;
        }
        assert_eq!(seen, ALL);
        assert_eq!(bit("host"), None);
    }

    #[test]
    fn keep_alive_and_the_headers_connection_names_go_from_responses() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_response(&mut h, false);
        assert_eq!(names(&h), ["x-kept"]);
        let mut switching = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_response(&mut switching, true);
        assert_eq!(switching.len(), 2);
    }

    #[test]
    fn connection_elements_are_read_in_any_case_and_spacing() {
        let read: Vec<_> = connection(b" Close ,,keep-ALIVE, upgrade,X-Hop ").collect();
        assert_eq!(
            read,
            [
                Token::Close,
                Token::KeepAlive,
                Token::Upgrade,
                Token::Other(b"X-Hop")
            ]
        );
        assert!(accepts_trailers(b"deflate, Trailers"));
        assert!(!accepts_trailers(b"deflate"));
    }

    #[test]
    fn trailers_lose_hop_by_hop_and_message_fields_but_keep_checksums() {
        let mut t = map(&[
            ("set-cookie", "wxgate_session=x"),
            ("connection", "close"),
            ("content-length", "3"),
            ("x-checksum", "abc"),
        ]);
        clean_trailers(&mut t);
        assert_eq!(names(&t), ["x-checksum"]);
    }
}
