//! The gateway's cookies as a browser sees them: their names (with the `__Host-` or
//! `__Secure-` prefix), their attributes, and reading one back out of a request.
//!
//! With `session.cookie_secure` and no `session.cookie_domain`, names carry `__Host-`:
//! browsers then accept the cookie only with `Secure`, `Path=/` and no `Domain`, set by this
//! very host, so a sibling subdomain can neither plant nor overwrite it (session fixation,
//! login CSRF through a planted state). With a domain the prefix is `__Secure-`.

use cookie::{Cookie, SameSite};
use http::HeaderMap;
use http::header::COOKIE;

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
}
