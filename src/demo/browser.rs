//! The demo's simulated WeChat browser: a wrapper in front of the gate that lets a desktop
//! browser walk the WeChat login by adding WeChat's marker to its User-Agent, unless the
//! visitor switched to the desktop view to see the page a real desktop visitor gets.
//! Only `wxgate demo` uses this; production has no setting that treats browsers as WeChat.

use crate::body::ClientBody;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::gate::ConnInfo;
use crate::pages::{self, Failure};
use crate::server::Handler;

/// What the demo appends to a browser's User-Agent so the gateway takes it for WeChat.
pub const WECHAT_MARKER: &str = " MicroMessenger/8.0.50";
/// The demo cookie that turns the simulation off (`desktop`).
pub const VIEW_COOKIE: &str = "wxgate_demo_view";
/// The switch: `?as=desktop` or `?as=wechat`.
pub const SWITCH_PATH: &str = "/_demo/view";

/// Which browser the gateway should see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The browser passes as WeChat's in-app browser (the default).
    WeChat,
    /// The browser is shown as it is: a desktop visitor.
    Desktop,
}

/// The gate (or any handler) behind the demo's simulation.
pub struct SimulatedWeChat<H> {
    inner: H,
}

impl<H: Handler> SimulatedWeChat<H> {
    pub fn new(inner: H) -> Self {
        Self { inner }
    }
}

impl<H: Handler> Handler for SimulatedWeChat<H> {
    async fn call(&self, mut request: Request<ClientBody>, conn: ConnInfo) -> Response<Body> {
        if request.uri().path() == SWITCH_PATH {
            return switch(request.uri().query(), request.headers());
        }
        if view_of(request.headers()) == View::WeChat {
            add_marker(request.headers_mut());
        }
        self.inner.call(request, conn).await
    }
}

/// The view the demo cookie asks for; no cookie means WeChat.
pub fn view_of(headers: &HeaderMap) -> View {
    let desktop = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == VIEW_COOKIE && value == "desktop");
    if desktop { View::Desktop } else { View::WeChat }
}

/// Appends the WeChat marker once; a real WeChat browser (a phone on the LAN) is left alone.
pub fn add_marker(headers: &mut HeaderMap) {
    let current = headers
        .get(USER_AGENT)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
    if current.to_ascii_lowercase().contains("micromessenger") {
        return;
    }
    let simulated = format!("{current}{WECHAT_MARKER}");
    if let Ok(value) = HeaderValue::from_str(simulated.trim_start()) {
        headers.insert(USER_AGENT, value);
    }
}

/// Sets or clears the demo cookie. Switching to desktop logs out first, because a visitor
/// with a session is let in whatever the browser: the QR page is what a desktop visitor
/// *without* a session gets.
fn switch(query: Option<&str>, headers: &HeaderMap) -> Response<Body> {
    let wanted = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == "as")
        .map(|(_, value)| value.into_owned());
    let (cookie, location) = match wanted.as_deref() {
        Some("desktop") => (
            format!("{VIEW_COOKIE}=desktop; Path=/; HttpOnly; SameSite=Lax"),
            "/_wxgate/logout?rd=%2F",
        ),
        Some("wechat") => (
            format!("{VIEW_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
            "/",
        ),
        _ => {
            return pages::respond(
                &Failure::BadRequest("Use /_demo/view?as=desktop or /_demo/view?as=wechat."),
                headers,
            );
        }
    };
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let h = response.headers_mut();
    h.insert(LOCATION, HeaderValue::from_static(location));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        h.insert(SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::client::{Browser, browser_from_user_agent};

    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn a_desktop_browser_passes_as_wechat_after_the_marker() {
        let mut h = headers(&[("user-agent", CHROME)]);
        assert_eq!(browser_from_user_agent(CHROME.as_bytes()), Browser::Other);
        add_marker(&mut h);
        let ua = h[USER_AGENT].to_str().unwrap();
        assert_eq!(ua, format!("{CHROME}{WECHAT_MARKER}"));
        assert_eq!(browser_from_user_agent(ua.as_bytes()), Browser::WeChat);
        add_marker(&mut h);
        assert_eq!(
            h[USER_AGENT]
                .to_str()
                .unwrap()
                .matches("MicroMessenger")
                .count(),
            1
        );
    }

    #[test]
    fn a_browser_without_user_agent_gets_the_marker_alone() {
        let mut h = HeaderMap::new();
        add_marker(&mut h);
        assert_eq!(h[USER_AGENT], "MicroMessenger/8.0.50");
    }

    #[test]
    fn only_the_desktop_cookie_turns_the_simulation_off() {
        let cases = [
            (vec![], View::WeChat),
            (vec![("cookie", "wxgate_demo_view=desktop")], View::Desktop),
            (
                vec![("cookie", "a=1; wxgate_demo_view=desktop")],
                View::Desktop,
            ),
            (vec![("cookie", "wxgate_demo_view=wechat")], View::WeChat),
            (vec![("cookie", "xwxgate_demo_view=desktop")], View::WeChat),
        ];
        for (pairs, want) in cases {
            assert_eq!(view_of(&headers(&pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn the_switch_sets_the_cookie_and_logs_out_or_clears_it() {
        let desktop = switch(Some("as=desktop"), &HeaderMap::new());
        assert_eq!(desktop.status(), StatusCode::FOUND);
        assert_eq!(desktop.headers()[LOCATION], "/_wxgate/logout?rd=%2F");
        let cookie = desktop.headers()[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("wxgate_demo_view=desktop;"), "{cookie}");
        let wechat = switch(Some("as=wechat"), &HeaderMap::new());
        assert_eq!(wechat.headers()[LOCATION], "/");
        assert!(
            wechat.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let bad = switch(Some("as=%3Cscript%3E"), &HeaderMap::new());
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(bad.headers().get(SET_COOKIE).is_none());
    }
}
