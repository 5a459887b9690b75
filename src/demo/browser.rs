//! The demo's simulated WeChat browser: a wrapper in front of the gate (and the mock WeChat)
//! that lets a desktop browser walk the WeChat login as Android's or iOS's webview: WeChat's
//! marker in the User-Agent, and on Android `X-Requested-With: com.tencent.mm` on every
//! request, as XWEB and X5 send it. New visitors get Android and iOS in turn; a cookie
//! keeps each visitor's view, and `/_demo/view` switches it (or to the desktop view, to see
//! the page a real desktop visitor gets).
//! Only `wxgate demo` uses this; production has no setting that treats browsers as WeChat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http1::ClientBody;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::failure::Failure;
use crate::gate::ConnInfo;
use crate::pages;
use crate::server::Handler;

/// What the demo appends to a browser's User-Agent so the gateway takes it for WeChat.
pub const WECHAT_MARKER: &str = " MicroMessenger/8.0.50";
/// What Android's WebView (XWEB, X5) adds to every request of WeChat, page loads included.
pub const ANDROID_HEADER: (&str, &str) = ("x-requested-with", "com.tencent.mm");
/// The demo cookie that holds the view: `android`, `ios` or `desktop`.
pub const VIEW_COOKIE: &str = "wxgate_demo_view";
/// The switch: `?as=android`, `?as=ios`, `?as=desktop`, or `?as=wechat` (the default again).
pub const SWITCH_PATH: &str = "/_demo/view";

/// Which browser the gateway (and the mock WeChat) should see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Android WeChat's WebView: WeChat's User-Agent and `X-Requested-With: com.tencent.mm`.
    Android,
    /// iOS WeChat's WKWebView: WeChat's User-Agent only.
    Ios,
    /// The browser is shown as it is: a desktop visitor.
    Desktop,
}

impl View {
    fn cookie_value(self) -> &'static str {
        match self {
            View::Android => "android",
            View::Ios => "ios",
            View::Desktop => "desktop",
        }
    }

    fn from_cookie_value(value: &str) -> Option<Self> {
        [View::Android, View::Ios, View::Desktop]
            .into_iter()
            .find(|view| view.cookie_value() == value)
    }
}

/// Which WeChat webview a visitor without a view cookie gets (`wxgate demo --webview`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Webview {
    /// Android and iOS in turn, one per new visitor, as WeChat's users are split.
    #[default]
    Alternate,
    Android,
    Ios,
}

/// The demo's choice of webview for new visitors, shared by the gateway's and the mock's side.
#[derive(Debug, Default)]
pub struct Simulation {
    webview: Webview,
    visitors: AtomicU64,
}

impl Simulation {
    pub fn new(webview: Webview) -> Arc<Self> {
        Arc::new(Self {
            webview,
            visitors: AtomicU64::new(0),
        })
    }

    /// The view of this request: its cookie's, else a new visitor's (`true`: not yet in a cookie).
    fn view(&self, headers: &HeaderMap) -> (View, bool) {
        if let Some(view) = view_of(headers) {
            return (view, false);
        }
        let view = match self.webview {
            Webview::Android => View::Android,
            Webview::Ios => View::Ios,
            Webview::Alternate => {
                if self.visitors.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                    View::Android
                } else {
                    View::Ios
                }
            }
        };
        (view, true)
    }

    /// What the mock WeChat sees of a browser: the same webview as the gateway saw.
    pub fn dress(&self, headers: &mut HeaderMap) {
        let view = view_of(headers).unwrap_or(View::Android);
        dress(view, headers);
    }
}

/// The gate (or any handler) behind the demo's simulation.
pub struct SimulatedWeChat<H> {
    inner: H,
    simulation: Arc<Simulation>,
}

impl<H: Handler> SimulatedWeChat<H> {
    pub fn new(inner: H, simulation: Arc<Simulation>) -> Self {
        Self { inner, simulation }
    }
}

impl<H: Handler> Handler for SimulatedWeChat<H> {
    async fn call(&self, mut request: Request<ClientBody>, conn: ConnInfo) -> Response<Body> {
        if request.uri().path() == SWITCH_PATH {
            return switch(request.uri().query(), request.headers());
        }
        let (view, new_visitor) = self.simulation.view(request.headers());
        dress(view, request.headers_mut());
        let mut response = self.inner.call(request, conn).await;
        if new_visitor {
            // The mock WeChat on another port of this host reads the same cookie.
            let cookie = format!(
                "{VIEW_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
                view.cookie_value()
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(SET_COOKIE, value);
            }
        }
        response
    }
}

/// The view the demo cookie names, if any.
pub fn view_of(headers: &HeaderMap) -> Option<View> {
    crate::login::cookies::read(headers, VIEW_COOKIE).and_then(View::from_cookie_value)
}

/// Makes the request look like `view`'s browser. A real WeChat browser (a phone on the LAN)
/// is left as it is.
fn dress(view: View, headers: &mut HeaderMap) {
    if view == View::Desktop || is_wechat(headers) {
        return;
    }
    add_marker(headers);
    if view == View::Android && !headers.contains_key(ANDROID_HEADER.0) {
        headers.insert(
            HeaderName::from_static(ANDROID_HEADER.0),
            HeaderValue::from_static(ANDROID_HEADER.1),
        );
    }
}

fn is_wechat(headers: &HeaderMap) -> bool {
    headers.get(USER_AGENT).is_some_and(|ua| {
        String::from_utf8_lossy(ua.as_bytes())
            .to_ascii_lowercase()
            .contains("micromessenger")
    })
}

/// Appends the WeChat marker once.
pub fn add_marker(headers: &mut HeaderMap) {
    if is_wechat(headers) {
        return;
    }
    let current = headers
        .get(USER_AGENT)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
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
    let (cookie, location) = match wanted.as_deref().map(|v| (v, View::from_cookie_value(v))) {
        Some((_, Some(View::Desktop))) => (
            format!("{VIEW_COOKIE}=desktop; Path=/; HttpOnly; SameSite=Lax"),
            "/_wxgate/logout?rd=%2F",
        ),
        Some((_, Some(view))) => (
            format!(
                "{VIEW_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
                view.cookie_value()
            ),
            "/",
        ),
        Some(("wechat", None)) => (
            format!("{VIEW_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
            "/",
        ),
        _ => {
            return pages::respond(
                &Failure::BadRequest(
                    "Use /_demo/view?as=android, ?as=ios, ?as=desktop or ?as=wechat.",
                ),
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
    use crate::login::visitor::{Browser, browser_from_user_agent};

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
    fn the_cookie_names_the_view() {
        let cases = [
            (vec![], None),
            (
                vec![("cookie", "wxgate_demo_view=desktop")],
                Some(View::Desktop),
            ),
            (
                vec![("cookie", "a=1; wxgate_demo_view=android")],
                Some(View::Android),
            ),
            (vec![("cookie", "wxgate_demo_view=ios")], Some(View::Ios)),
            (vec![("cookie", "wxgate_demo_view=wechat")], None),
            (vec![("cookie", "xwxgate_demo_view=desktop")], None),
        ];
        for (pairs, want) in cases {
            assert_eq!(view_of(&headers(&pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn new_visitors_get_android_and_ios_in_turn_and_a_cookie_keeps_theirs() {
        let simulation = Simulation::new(Webview::Alternate);
        let first = simulation.view(&HeaderMap::new());
        let second = simulation.view(&HeaderMap::new());
        assert_eq!([first, second], [(View::Android, true), (View::Ios, true)]);
        let kept = headers(&[("cookie", "wxgate_demo_view=ios")]);
        assert_eq!(simulation.view(&kept), (View::Ios, false));
        assert_eq!(simulation.view(&HeaderMap::new()).0, View::Android);
        let ios_only = Simulation::new(Webview::Ios);
        assert_eq!(ios_only.view(&HeaderMap::new()).0, View::Ios);
        assert_eq!(ios_only.view(&HeaderMap::new()).0, View::Ios);
    }

    #[test]
    fn android_sends_its_header_ios_does_not_and_a_real_phone_is_left_alone() {
        let mut android = headers(&[("user-agent", CHROME)]);
        dress(View::Android, &mut android);
        assert_eq!(android["x-requested-with"], "com.tencent.mm");
        assert!(
            android[USER_AGENT]
                .to_str()
                .unwrap()
                .ends_with(WECHAT_MARKER)
        );
        let mut ios = headers(&[("user-agent", CHROME)]);
        dress(View::Ios, &mut ios);
        assert!(ios.get("x-requested-with").is_none());
        assert!(ios[USER_AGENT].to_str().unwrap().ends_with(WECHAT_MARKER));
        let mut desktop = headers(&[("user-agent", CHROME)]);
        dress(View::Desktop, &mut desktop);
        assert_eq!(desktop[USER_AGENT], CHROME);
        let phone = "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47";
        let mut real = headers(&[("user-agent", phone)]);
        dress(View::Android, &mut real);
        assert_eq!(real[USER_AGENT], phone);
        assert!(real.get("x-requested-with").is_none());
    }

    #[test]
    fn the_switch_sets_the_cookie_and_logs_out_or_clears_it() {
        let desktop = switch(Some("as=desktop"), &HeaderMap::new());
        assert_eq!(desktop.status(), StatusCode::FOUND);
        assert_eq!(desktop.headers()[LOCATION], "/_wxgate/logout?rd=%2F");
        let cookie = desktop.headers()[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("wxgate_demo_view=desktop;"), "{cookie}");
        let android = switch(Some("as=android"), &HeaderMap::new());
        assert_eq!(android.headers()[LOCATION], "/");
        assert!(
            android.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .starts_with("wxgate_demo_view=android;")
        );
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
