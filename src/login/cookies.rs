//! The gateway's cookies as a browser sees them: their names (with the `__Host-` or
//! `__Secure-` prefix), their attributes, reading one back out of a request, and keeping
//! them away from upstreams (out of requests, and out of upstreams' `Set-Cookie`s).
//!
//! With `session.cookie_secure` and no `session.cookie_domain`, names carry `__Host-`:
//! browsers then accept the cookie only with `Secure`, `Path=/` and no `Domain`, set by this
//! very host, so a sibling subdomain can neither plant nor overwrite it (session fixation,
//! login CSRF through a planted state). With a domain the prefix is `__Secure-`.

use cookie::{Cookie, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

/// How one of the gateway's cookies is named and scoped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSpec {
    name: String,
    domain: Option<String>,
    secure: bool,
}

impl CookieSpec {
    /// `base` is the configured name without prefix; `domain` is `session.cookie_domain`.
    pub fn new(base: &str, secure: bool, domain: Option<&str>) -> Self {
        let domain = domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase());
        let prefix = match (secure, &domain) {
            (true, None) => "__Host-",
            (true, Some(_)) => "__Secure-",
            (false, _) => "",
        };
        CookieSpec {
            name: format!("{prefix}{base}"),
            domain,
            secure,
        }
    }

    /// The name on the wire, prefix included.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A cookie carrying `value`: `Path=/`, `HttpOnly`, `SameSite=Lax` (sent on WeChat's
    /// top-level redirect back to the callback, which `Strict` would not be), `Secure` and
    /// `Domain` as configured. No Max-Age: the caller sets the lifetime.
    pub fn build(&self, value: String) -> Cookie<'static> {
        let mut cookie = Cookie::build((self.name.clone(), value))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }

    /// The cookie that deletes this one (same name, path and domain; Max-Age=0).
    pub fn removal(&self) -> Cookie<'static> {
        let mut cookie = self.build(String::new());
        cookie.make_removal();
        cookie
    }

    /// This cookie's value in the request, if it is there exactly once.
    pub fn read<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        read(headers, &self.name)
    }
}

/// The value of cookie `name` across all `Cookie` headers. Two cookies of that name mean
/// none: one of them was planted, and the gateway cannot tell which. A header that is not
/// visible ASCII is skipped whole, so its bytes can never be half-read as a cookie.
pub fn read<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        // Split by hand on purpose: the `cookie` crate's `split_parse` builds a whole
        // `Cookie` per pair, +650 instructions on every logged-in request (callgrind,
        // 41 361 against 40 708), for the same trimmed `name=value` pairs.
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() == name {
                if found.is_some() {
                    return None;
                }
                found = Some(v.trim());
            }
        }
    }
    found
}

/// The `name=value` pairs of a `Cookie` header, trimmed, empty ones skipped.
fn cookie_pairs(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// Removes the cookies named `names` from every `Cookie` header, dropping headers left empty.
/// Headers that name none of them are left as they are, without an allocation.
pub fn remove(headers: &mut HeaderMap, names: [&str; 2]) {
    // Bytes, not text: a cookie value may hold obs-text, which must reach the upstream as
    // it came. Names are compared trimmed, as `cookies::read` reads them.
    let ours = |pair: &[u8]| {
        let name = pair
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(pair)
            .trim_ascii();
        names.iter().any(|n| name == n.as_bytes())
    };
    let (mut any_ours, mut only_ours) = (false, true);
    for pair in headers.get_all(COOKIE).iter().flat_map(cookie_pairs) {
        match ours(pair) {
            true => any_ours = true,
            false => only_ours = false,
        }
    }
    if !any_ours {
        return;
    }
    if only_ours {
        // A page that keeps no cookies of its own: the header goes whole, nothing is rebuilt.
        headers.remove(COOKIE);
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            if !cookie_pairs(value).any(ours) {
                return Some(value.clone());
            }
            let rest: Vec<&[u8]> = cookie_pairs(value).filter(|pair| !ours(pair)).collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).ok())
                .flatten()
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

/// Drops the `Set-Cookie`s of an answer that set one of `names`.
pub fn strip_set_cookies(headers: &mut HeaderMap, names: [&str; 2]) {
    if !headers.contains_key(SET_COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| !sets_one_of(v.as_bytes(), &names))
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for v in kept {
        headers.append(SET_COOKIE, v);
    }
}

/// Whether a `Set-Cookie` value sets one of `names` (prefixes compared without case, as
/// browsers do).
fn sets_one_of(set_cookie: &[u8], names: &[&str]) -> bool {
    let name_end = set_cookie
        .iter()
        .position(|&b| b == b'=' || b == b';')
        .unwrap_or(set_cookie.len());
    let name = set_cookie[..name_end].trim_ascii();
    names
        .iter()
        .any(|own| name.eq_ignore_ascii_case(own.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn prefix_follows_secure_and_domain() {
        let cases = [
            (true, None, "__Host-wxgate_session", None),
            (
                true,
                Some(".Example.com"),
                "__Secure-wxgate_session",
                Some("example.com"),
            ),
            (false, None, "wxgate_session", None),
            (
                false,
                Some("example.com"),
                "wxgate_session",
                Some("example.com"),
            ),
        ];
        for (secure, domain, name, want_domain) in cases {
            let spec = CookieSpec::new("wxgate_session", secure, domain);
            assert_eq!(spec.name(), name);
            let c = spec.build("v".into());
            assert_eq!(c.path(), Some("/"));
            assert_eq!(c.http_only(), Some(true));
            assert_eq!(c.same_site(), Some(SameSite::Lax));
            assert_eq!(c.secure(), Some(secure));
            assert_eq!(c.domain(), want_domain);
        }
    }

    #[test]
    fn host_prefixed_cookie_meets_the_browser_rules() {
        let spec = CookieSpec::new("s", true, None);
        let text = spec.build("v".into()).to_string();
        assert!(text.starts_with("__Host-s=v"), "{text}");
        assert!(text.contains("Secure") && text.contains("Path=/"), "{text}");
        assert!(!text.contains("Domain"), "{text}");
        let removal = spec.removal().to_string();
        assert!(
            removal.contains("Max-Age=0") && removal.contains("Path=/"),
            "{removal}"
        );
    }

    #[test]
    fn reading_takes_exactly_one_well_formed_occurrence() {
        let cases: &[(&[&[u8]], Option<&str>)] = &[
            (&[b"a=1; s=v; b=2"], Some("v")),
            (&[b"a=1", b"s=v"], Some("v")),
            (&[b"s=v; s=w"], None),
            (&[b"s=v", b"s=v"], None),
            (&[b"S=v"], None),
            (&[b"xs=v; s2=v"], None),
            (&[b"s"], None),
            (&[b"s=\xff\xfe"], None),
            (&[b"s=\xff", b"s=v"], Some("v")),
            (&[b" s = v "], Some("v")),
            (&[b"s="], Some("")),
        ];
        for (values, want) in cases {
            assert_eq!(read(&headers(values), "s"), *want, "{values:?}");
        }
    }

    fn cookies(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(COOKIE, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn values(headers: &HeaderMap) -> Vec<Vec<u8>> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    const OURS: [&str; 2] = ["wxgate_session", "wxgate_state"];

    #[test]
    fn the_gateways_cookies_go_and_every_other_byte_stays() {
        let mut h = cookies(&[
            b"a=1; wxgate_session=secret; b=\xe4\xb8\xad",
            b"wxgate_state = s1 ;wxgate_session=again",
            b"c=3",
        ]);
        remove(&mut h, OURS);
        assert_eq!(
            values(&h),
            [b"a=1; b=\xe4\xb8\xad".to_vec(), b"c=3".to_vec()],
            "obs-text kept as sent, emptied headers dropped, order kept"
        );
    }

    #[test]
    fn a_cookie_header_of_the_gateways_cookies_alone_goes_whole() {
        let mut h = cookies(&[b"wxgate_session=secret", b" ; wxgate_state=s1;"]);
        remove(&mut h, OURS);
        assert!(!h.contains_key(COOKIE), "{h:?}");
    }

    #[test]
    fn headers_without_the_gateways_cookies_are_untouched() {
        let raw: &[u8] = b"x=1;  wxgate_sessionx=2 ; y";
        let mut h = cookies(&[raw]);
        remove(&mut h, OURS);
        assert_eq!(values(&h), [raw.to_vec()]);
    }
}
