//! Entry points for the cargo-fuzz targets in `fuzz/`, which see the crate only from outside.
//! Each takes arbitrary bytes, runs one parser the internet can reach, and panics when a
//! property the gateway relies on breaks. Not an API: hidden from the documentation.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, NonWeChat, RouteConfig, Scope};
use crate::login::{CookieSpec, PendingLogins, ReturnUrl, StateKey, cookies};
use crate::route::{RouteTable, path};
use crate::session::SessionId;

const ORIGIN: &str = "https://m.example.com";

/// Path normalisation and the route decision: a normalised path normalises to itself,
/// never climbs above the root or keeps a dot segment, and the decision made on it is
/// the decision made on its normal form (T66: decided path = forwarded path).
pub fn path_and_route(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = path::normalize(raw) else {
        return;
    };
    assert!(normal.starts_with('/'), "{raw:?} → {normal:?}");
    assert_eq!(
        path::normalize(&normal).as_deref(),
        Ok(normal.as_str()),
        "not idempotent: {raw:?}"
    );
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} → {normal:?}"
    );
    assert!(!normal.contains("//"), "{raw:?} → {normal:?}");
    let table = routes();
    let decided = table.route_for(Some("m.example.com"), &normal);
    let protected = |r: Option<&std::sync::Arc<crate::route::Route>>| {
        r.is_some_and(|r| r.scope != Scope::Public)
    };
    // Whatever the spelling, a path under /admin/ is protected.
    let lower = normal.to_ascii_lowercase();
    let bare: String = lower
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/");
    let open = bare.starts_with("/admin/open/");
    if (bare.starts_with("/admin/") || bare == "/admin") && !open {
        assert!(protected(decided), "{raw:?} → {normal:?} judged public");
    }
}

fn routes() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut config = Config::default();
        for (path, scope) in [
            ("/", Scope::Public),
            ("/public/", Scope::Public),
            ("/admin/", Scope::SnsapiBase),
            ("/admin/open/", Scope::Public),
            ("/vip", Scope::SnsapiUserinfo),
        ] {
            config.routes.push(RouteConfig {
                host: None,
                path: path.to_owned(),
                upstream: url::Url::parse("http://127.0.0.1:9000").unwrap_or_else(|_| {
                    unreachable!("fixed URL");
                }),
                scope,
                non_wechat: NonWeChat::Deny,
                allow_snapshot: true,
                timeout: None,
                app: None,
                access: None,
            });
        }
        RouteTable::from_config(&config).unwrap_or_default()
    })
}

/// Return-URL validation: whatever either validator accepts resolves, as a browser
/// resolves a `Location`, to the public origin, and holds nothing a header could break on.
pub fn return_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(origin) = url::Url::parse(ORIGIN) else {
        return;
    };
    let allowed = ["shop.example.com".to_owned()];
    let accepted = [
        ReturnUrl::from_rd(text, &origin, &allowed),
        ReturnUrl::from_request_target(text),
    ];
    for url in accepted.into_iter().flatten() {
        let location = url.as_str();
        assert!(
            location
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b) && b != b'\\'),
            "{text:?} accepted as {location:?}"
        );
        assert!(
            http::HeaderValue::from_str(location).is_ok(),
            "{location:?}"
        );
        let joined = origin.join(location);
        let host = joined
            .as_ref()
            .ok()
            .and_then(|j| j.host_str().map(str::to_owned));
        assert!(
            matches!(host.as_deref(), Some("m.example.com" | "shop.example.com")),
            "{text:?} accepted as {location:?} → {joined:?}"
        );
    }
}

/// Cookie reading and decoding: any `Cookie` header yields at most a well-formed session id
/// and a state cookie that opens to nothing or to logins this key sealed, never a panic.
pub fn cookies(data: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.append(http::header::COOKIE, value);
    let session = CookieSpec::new("wxgate_session", true, None);
    if let Some(raw) = session.read(&headers) {
        if let Some(id) = SessionId::from_cookie(raw) {
            assert_eq!(id.cookie_value(), raw);
        }
    }
    let state = CookieSpec::new("wxgate_state", true, None);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let pending = PendingLogins::from_cookie(state_key(), state.read(&headers), now);
    // Forged bytes never open under the key: only the test's own cookies could.
    assert!(pending.is_empty(), "a forged state cookie opened");
    // Whatever the bytes, a raw (unsealed) value is never a pending login either.
    let raw = std::str::from_utf8(data).ok();
    assert!(PendingLogins::from_cookie(state_key(), raw, SystemTime::now()).is_empty());
    let _ = cookies::read(&headers, "");
}

fn state_key() -> &'static StateKey {
    static KEY: OnceLock<StateKey> = OnceLock::new();
    KEY.get_or_init(
        || match StateKey::derive(b"fuzzing-session-secret-0123456789-abcdef") {
            Ok(key) => key,
            Err(e) => unreachable!("a 40-byte secret derives a key: {e}"),
        },
    )
}

/// WeChat's JSON answers: any body is a reply, an error or a `Malformed`, never a panic; a
/// grant that parses has a non-empty openid.
pub fn wechat_json(data: &[u8]) {
    use crate::wechat::parse::{Reply, parse_reply, token_grant, user_info};
    let Ok(Reply::Ok(map)) = parse_reply(data) else {
        return;
    };
    if let Ok(grant) = token_grant(&map) {
        assert!(!grant.openid.is_empty());
    }
    let _ = user_info(&map);
}

/// Configuration text: any TOML is a `Config` or problems named by key, never a panic; the
/// route paths of a parsed config normalise or are refused.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::parse_toml(text) {
        Ok(config) => {
            for route in &config.routes {
                let _ = path::normalize(&route.path);
            }
            let _ = toml::to_string(&config);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The server lane's request reading (`http1::lane`): never panics; a request it serves
/// is a complete bodiless HTTP/1.1 head taken whole from the front, with what follows left
/// as it came; anything it does not serve leaves every byte to hyper, untouched.
pub fn lane_request(data: &[u8]) {
    use crate::http1::fuzz::{Next, take_request};
    let mut buf = bytes::BytesMut::from(data);
    match take_request(&mut buf, &mut Vec::new()) {
        Next::Serve { request, .. } => {
            assert!(buf.len() < data.len(), "nothing taken");
            assert!(data.ends_with(&buf), "what follows the head was changed");
            let headers = request.headers();
            assert!(!headers.contains_key(http::header::CONTENT_LENGTH));
            assert!(!headers.contains_key(http::header::TRANSFER_ENCODING));
            assert!(!headers.contains_key(http::header::UPGRADE));
            assert!(!headers.contains_key(http::header::EXPECT));
            assert_eq!(request.version(), http::Version::HTTP_11);
            assert_ne!(request.method(), http::Method::CONNECT);
            assert!(request.uri().path().starts_with('/'));
            let taken = &data[..data.len() - buf.len()];
            assert!(taken.ends_with(b"\n"), "a head ends with its empty line");
        }
        Next::Partial | Next::Hyper => assert_eq!(&buf[..], data, "bytes left to hyper changed"),
    }
}

/// The upstream client's response head parser and every body framing it reads
/// (`http1::wire`, `http1::framing`): never panics; no connection field reaches the client; a body is never
/// longer than the bytes after the head; a reused connection's body ended exactly.
pub fn response(data: &[u8]) {
    use crate::http1::fuzz::{Framing, Reader, Step, framing, parse_head};
    let mut buf = bytes::BytesMut::from(data);
    let head = match parse_head(&mut buf, &mut Vec::new()) {
        Ok(Some(head)) => head,
        Ok(None) => return assert_eq!(&buf[..], data, "a partial head was consumed"),
        Err(_) => return,
    };
    assert!(data.ends_with(&buf));
    let headers = head.response.headers();
    for hop in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
    ] {
        assert!(!headers.contains_key(hop), "{hop} reached the client");
    }
    for method in [http::Method::GET, http::Method::HEAD] {
        let Ok((declared, reusable)) = framing(&head, &method) else {
            continue;
        };
        if headers.contains_key(http::header::CONTENT_LENGTH) && method == http::Method::GET {
            // A length beside a coding was refused above, whichever came first.
            assert_ne!(declared, Framing::Chunked);
        }
        let mut body = Reader::new(declared);
        let mut rest = buf.clone();
        let before = rest.len();
        let mut data_len = 0;
        let ended = loop {
            match body.step(&mut rest) {
                Step::Done => break true,
                Step::Frame(frame) => {
                    if let Some(data) = frame.data_ref() {
                        data_len += data.len();
                    }
                }
                Step::Again => {}
                Step::Read | Step::Fail(_) => break false,
            }
        };
        assert!(data_len <= before, "more body than bytes");
        if let (true, Framing::Length(n)) = (ended, declared) {
            assert_eq!(
                data_len as u64, n,
                "a length-framed body ended early or late"
            );
        }
        if ended && reusable {
            // A reused connection's next answer starts where this body ended: a body that
            // ends by the connection's close can never be one.
            assert_ne!(declared, Framing::UntilClose);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Inputs the fuzzers once failed on, kept as tests so they stay fixed.
    #[test]
    fn inputs_the_fuzzers_found() {
        // fuzz/path_route: a parameter-only segment made /admin/;//open/… public.
        super::path_and_route(b"/admin/;//open/ndm3%A9)");
    }
}
