//! A whole login world for integration tests: the in-process mock WeChat (automatic
//! consent), a recording upstream, and the gateway in front with routes of every scope.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::cookie::{CookieStore, Jar};

use super::upstream::Upstream;
use wxgate::config::{Config, NonWeChat, Scope};
use wxgate::mock::{MockConfig, MockWeChat};

pub const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";
/// Android WeChat on XWEB (tests/data/clients.tsv, `android-wechat-xweb-page-from-link`);
/// its WebView also sends `X-Requested-With: com.tencent.mm` on every request.
pub const ANDROID_WECHAT_UA: &str = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ2A.230505.002; wv) \
    AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 \
    MMWEBSDK/20231202 MMWEBID/2247 MicroMessenger/8.0.47.2560(0x28002F35) WeChat/arm64 Weixin NetType/WIFI \
    Language/zh_CN ABI/arm64";
pub const DESKTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

/// The HS256 secret the world signs identities with.
pub const IDENTITY_SECRET: &str = "test-identity-secret-0123456789-abcdefghij";

/// The claims of `token`, verified as an upstream would with the world's shared secret.
pub fn verify_identity(token: &str) -> wxgate::identity::Claims {
    let source = wxgate::identity::KeySource {
        algorithm: wxgate::identity::Algorithm::HS256,
        key_file: None,
        secret: Some(IDENTITY_SECRET.into()),
    };
    wxgate::identity::KeySet::load(&source, &[])
        .unwrap()
        .verify(token, "wxgate", "wxgate-upstream")
        .unwrap()
}

/// The verified identity of the last request that reached the world's upstream.
pub fn last_identity(w: &World) -> wxgate::identity::Claims {
    verify_identity(w.up.last().headers["x-wechat-identity"].to_str().unwrap())
}

pub struct World {
    pub gw: wxgate::server::Running,
    pub up: Upstream,
    pub mock: SocketAddr,
    pub origin: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The default world; see [`world_with`].
pub async fn world() -> World {
    world_with(|_, _| {}).await
}

/// A world whose mock and gateway configurations `tune` may change before they start.
/// Routes: `/` public, `/base/` and `/vip/` (snsapi_userinfo) with the QR page,
/// `/deny/` and `/anon/` with those `non_wechat` behaviours.
pub async fn world_with(tune: impl FnOnce(&mut MockConfig, &mut Config)) -> World {
    let up = Upstream::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    let mut mock_config = MockConfig {
        auto_consent: true,
        ..MockConfig::default()
    };
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let mut config: Config = super::config_with_routes(&[("/", up.addr)]);
    config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.server.public_url = Some(url::Url::parse(&origin).unwrap());
    config.wechat.appid = mock_config.appid.clone();
    config.wechat.secret = mock_config.secret.clone();
    config.wechat.authorize_url =
        url::Url::parse(&format!("http://{mock}/connect/oauth2/authorize")).unwrap();
    config.wechat.api_base = url::Url::parse(&format!("http://{mock}")).unwrap();
    config.session.store = wxgate::config::StoreKind::Memory;
    config.session.cookie_secure = false;
    config.session.secret = wxgate::Secret::new("test-session-secret-0123456789-abcdefghij");
    config.identity.algorithm = wxgate::identity::Algorithm::HS256;
    config.identity.secret = wxgate::Secret::new(IDENTITY_SECRET);
    config.identity.key_file = None;
    config.identity.plain_headers = true;
    config
        .routes
        .push(super::route("/base/", up.addr, Scope::SnsapiBase));
    config
        .routes
        .push(super::route("/vip/", up.addr, Scope::SnsapiUserinfo));
    let mut deny = super::route("/deny/", up.addr, Scope::SnsapiBase);
    deny.non_wechat = NonWeChat::Deny;
    config.routes.push(deny);
    let mut anon = super::route("/anon/", up.addr, Scope::SnsapiBase);
    anon.non_wechat = NonWeChat::Anonymous;
    config.routes.push(anon);
    tune(&mut mock_config, &mut config);
    tokio::spawn(MockWeChat::new(mock_config.clone()).serve(listener, std::future::pending()));
    let gw = super::start(&config).await;
    World {
        gw,
        up,
        mock,
        origin,
    }
}

/// A browser: a cookie jar, the given User-Agent, no automatic redirects.
///
/// `WECHAT_UA` asks for "WeChat's webview": the tests then meet Android as often as iOS,
/// as the gateway does. Each test's first such browser is Android or iOS by its name (the
/// same every run); its later ones alternate. Android's browser sends
/// `X-Requested-With: com.tencent.mm` on every request, as XWEB and X5 do.
/// `TEST_WEBVIEW=android|ios` makes every one of them that webview.
pub fn browser(ua: &str) -> reqwest::Client {
    browser_with_jar(ua).0
}

/// The same, with its cookie jar in hand (to read what the browser holds).
pub fn browser_with_jar(ua: &str) -> (reqwest::Client, Arc<Jar>) {
    let jar = Arc::new(Jar::default());
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar.clone())
        .no_proxy();
    builder = match ua {
        WECHAT_UA => match next_webview() {
            Webview::Android => {
                let mut android = reqwest::header::HeaderMap::new();
                android.insert(
                    "x-requested-with",
                    reqwest::header::HeaderValue::from_static("com.tencent.mm"),
                );
                builder
                    .user_agent(ANDROID_WECHAT_UA)
                    .default_headers(android)
            }
            Webview::Ios => builder.user_agent(WECHAT_UA),
        },
        other => builder.user_agent(other),
    };
    (builder.build().unwrap(), jar)
}

/// A browser that is exactly `ua`, `WECHAT_UA` included (always iOS, no extra headers), with
/// its cookie jar and no automatic redirects: for tests that pin the browser.
pub fn plain_browser_with_jar(ua: &str) -> (reqwest::Client, Arc<Jar>) {
    let jar = Arc::new(Jar::default());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar.clone())
        .user_agent(ua)
        .no_proxy()
        .build()
        .unwrap();
    (client, jar)
}

/// WeChat's two webviews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webview {
    Android,
    Ios,
}

thread_local! {
    /// Browsers handed out on this thread, and the test they were for.
    static WEBVIEWS: std::cell::RefCell<(String, u64)> = const { std::cell::RefCell::new((String::new(), 0)) };
}

/// The webview of the next `browser(WECHAT_UA)`; see [`browser`].
pub fn next_webview() -> Webview {
    match std::env::var("TEST_WEBVIEW").as_deref() {
        Ok("android") => return Webview::Android,
        Ok("ios") => return Webview::Ios,
        _ => {}
    }
    let test = std::thread::current().name().unwrap_or("").to_owned();
    let handed = WEBVIEWS.with(|cell| {
        let mut state = cell.borrow_mut();
        if state.0 != test {
            *state = (test.clone(), 0);
        }
        state.1 += 1;
        state.1 - 1
    });
    // FNV-1a of the test's name without its module (`login::foo` hashes as `foo`, as it did
    // when each module was a test binary of its own): stable across runs and platforms.
    let name = test
        .split_once("::")
        .map_or(test.as_str(), |(_, name)| name);
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let webview = if (seed + handed) % 2 == 0 {
        Webview::Android
    } else {
        Webview::Ios
    };
    // Shown with a failing test's output.
    eprintln!("{test}: WeChat webview #{handed} is {webview:?}");
    webview
}

/// Follows redirects by hand (WeChat's `#wechat_redirect` fragment is not sent), returning
/// every Location seen and the final response. The gateway's hash hop page is followed as
/// a browser without JavaScript does (its `<noscript>` refresh), and its target is listed
/// among the Locations.
pub async fn follow(client: &reqwest::Client, start: &str) -> (Vec<String>, reqwest::Response) {
    let mut url = start.to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let resp = client.get(&url).send().await.unwrap();
        let (resp, hop) = through_hop(resp).await;
        if let Some(target) = hop {
            url = target.clone();
            seen.push(target);
            continue;
        }
        let resp = resp.unwrap();
        if !resp.status().is_redirection() {
            return (seen, resp);
        }
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let next = reqwest::Url::parse(&url).unwrap().join(&location).unwrap();
        seen.push(location);
        url = next.to_string();
    }
    panic!("redirect loop: {seen:?}");
}

/// A login walked end to end, as WeChat's browser makes it: the protected page, the
/// gateway's hash hop page, the mock WeChat's authorize (automatic consent in the test
/// worlds), the gateway's callback, and the page again, now with a session.
pub struct Login {
    /// The browser that logged in: it holds the session.
    pub browser: reqwest::Client,
    /// Its cookies.
    pub jar: Arc<Jar>,
    /// Every Location on the way, as [`follow`] lists them: the authorize URL, the callback,
    /// the page (empty when the page was served at once).
    pub hops: Vec<String>,
    /// Where the walk ended: the page, or the answer that ended the login (a 403, a 504…).
    pub landing: reqwest::Response,
}

impl Login {
    /// The value of the browser's cookie `name` for the site it landed on.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let held = self.jar.cookies(self.landing.url())?;
        held.to_str()
            .unwrap()
            .split("; ")
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    }
}

/// The login dance: a new WeChat browser (Android's or iOS's webview, see [`browser`]) opens
/// `origin` + `path` and follows every step until it lands.
pub async fn log_in(origin: &str, path: &str) -> Login {
    log_in_with(browser_with_jar(WECHAT_UA), origin, path).await
}

/// The same dance in a browser the test made: another User-Agent, a mock user chosen by
/// cookie first, a pinned webview ([`plain_browser_with_jar`]), or one already logged in.
pub async fn log_in_with(
    (browser, jar): (reqwest::Client, Arc<Jar>),
    origin: &str,
    path: &str,
) -> Login {
    let (hops, landing) = follow(&browser, &format!("{origin}{path}")).await;
    Login {
        browser,
        jar,
        hops,
        landing,
    }
}

/// A login walked until WeChat sends the browser back with a code: the callback is not
/// loaded yet, for the tests that load it themselves (twice, at once, from another browser,
/// after a reload).
pub struct Pending {
    /// Where the gateway sent the browser on to WeChat.
    pub authorize: String,
    /// The gateway's callback with WeChat's code and the login's state.
    pub callback: String,
    /// The state cookie the gateway set when the login started (`name=value`).
    pub state_cookie: String,
}

/// Walks `browser` from `origin` + `path` to WeChat's answer; see [`Pending`].
pub async fn until_callback(browser: &reqwest::Client, origin: &str, path: &str) -> Pending {
    let start = browser.get(format!("{origin}{path}")).send().await.unwrap();
    let state_cookie = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.split('=').next().unwrap().ends_with("wxgate_state"))
        .expect("the login sets its state cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The hash hop page (or a 302) names the authorize URL.
    let authorize = authorize_target(start).await;
    let consent = browser.get(&authorize).send().await.unwrap();
    assert_eq!(consent.status(), 302, "the mock consents by itself");
    let callback = consent.headers()["location"].to_str().unwrap().to_owned();
    Pending {
        authorize,
        callback,
        state_cookie,
    }
}

/// The no-JavaScript target of the gateway's hash hop page (the authorize URL), if `resp`
/// is that page; else the response, untouched.
pub async fn through_hop(resp: reqwest::Response) -> (Option<reqwest::Response>, Option<String>) {
    let is_page = resp.status() == 200
        && resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"))
        && resp
            .headers()
            .get("content-security-policy")
            .is_some_and(|v| wxgate::pages::hop::is_hop_policy(v.to_str().unwrap()));
    if !is_page {
        return (Some(resp), None);
    }
    let html = resp.text().await.unwrap();
    let target = wxgate::pages::hop::refresh_target(&html).expect("a hop page");
    (None, Some(target))
}

/// The authorize URL a WeChat navigation is sent on to: the hop page's (or a 302's) target.
pub async fn authorize_target(resp: reqwest::Response) -> String {
    match through_hop(resp).await {
        (_, Some(target)) => target,
        (Some(resp), None) => {
            assert_eq!(resp.status(), 302, "neither a hop page nor a redirect");
            resp.headers()["location"].to_str().unwrap().to_owned()
        }
        (None, None) => unreachable!(),
    }
}

pub async fn mock_stats(mock: SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{mock}/_mock/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Merges `patch` into the mock's faults (`POST /_mock/faults`), as `wxgate mock-wechat`'s
/// flags would set them.
pub async fn set_mock_faults(mock: SocketAddr, patch: serde_json::Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{mock}/_mock/faults"))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{patch}: {}",
        response.status()
    );
}
