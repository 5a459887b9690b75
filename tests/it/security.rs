//! A gateway nobody gets around: the attack tables of `docs/security.md`, each case run over
//! real sockets against the gateway, the mock WeChat and recording upstreams. Every case
//! asserts the status the attacker gets and what (if anything) reached an upstream.
//! Test names carry the plan's T-numbers where one applies.

use crate::support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::upstream::Upstream;
use wxgate::config::{Config, NonWeChat, Scope};
use wxgate::mock::{MockConfig, MockWeChat};

const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";
const SESSION_SECRET: &str = "security-session-secret-0123456789-abcdefgh";
const IDENTITY_SECRET: &str = "security-identity-secret-0123456789-abcdefg";
const WAIT: Duration = Duration::from_secs(3);

/// The gateway with the mock WeChat and two recording upstreams: `public` behind the public
/// routes, `private` behind the protected ones (`/admin/`, `/ws`).
struct World {
    gw: wxgate::server::Running,
    public: Upstream,
    private: Upstream,
    mock: SocketAddr,
    origin: String,
    host: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Routes: `/` and `/public/` public; `/admin/` and `/ws` snsapi_base (`deny` for other
/// browsers). `tweak` adjusts the configuration before start.
async fn world(tweak: impl FnOnce(&mut Config, &Upstream, &Upstream)) -> World {
    let public = Upstream::start().await;
    let private = Upstream::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    let mock_config = MockConfig {
        auto_consent: true,
        ..MockConfig::default()
    };
    tokio::spawn(MockWeChat::new(mock_config.clone()).serve(listener, std::future::pending()));
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://{host}");
    let mut config = support::config_with_routes(&[("/", public.addr), ("/public/", public.addr)]);
    config.server.listen = host.parse().unwrap();
    config.server.public_url = Some(url::Url::parse(&origin).unwrap());
    config.server.limits.login_rate = 0;
    config.wechat.appid = mock_config.appid.clone();
    config.wechat.secret = mock_config.secret.clone();
    config.wechat.authorize_url =
        url::Url::parse(&format!("http://{mock}/connect/oauth2/authorize")).unwrap();
    config.wechat.api_base = url::Url::parse(&format!("http://{mock}")).unwrap();
    config.session.store = wxgate::config::StoreKind::Memory;
    config.session.cookie_secure = false;
    config.session.secret = wxgate::Secret::new(SESSION_SECRET);
    config.identity.algorithm = wxgate::identity::Algorithm::HS256;
    config.identity.secret = wxgate::Secret::new(IDENTITY_SECRET);
    config.identity.key_file = None;
    for path in ["/admin/", "/ws"] {
        let mut r = support::route(path, private.addr, Scope::SnsapiBase);
        r.non_wechat = NonWeChat::Deny;
        config.routes.push(r);
    }
    tweak(&mut config, &public, &private);
    let gw = support::start(&config).await;
    World {
        gw,
        public,
        private,
        mock,
        origin,
        host,
    }
}

/// The default world: nothing changed.
async fn default_world() -> World {
    world(|_, _, _| {}).await
}

/// A world whose catch-all `/` is protected, so any request target starts a login.
async fn protected_root_world() -> World {
    world(|c, _, private| {
        c.routes.retain(|r| r.path != "/");
        c.routes
            .push(support::route("/", private.addr, Scope::SnsapiBase));
    })
    .await
}

async fn mock_stats(mock: SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{mock}/_mock/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn codes_exchanged(mock: SocketAddr) -> u64 {
    mock_stats(mock).await["codes_exchanged"].as_u64().unwrap()
}

/// Status line and header lines of the first response in a raw answer.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(answer: &str) -> Head {
        let head = answer.split("\r\n\r\n").next().unwrap_or("");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Head { status, headers }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One request on its own connection, sent byte for byte.
async fn raw(w: &World, request: &str) -> (Head, String) {
    raw_bytes(w, request.as_bytes()).await
}

async fn raw_bytes(w: &World, request: &[u8]) -> (Head, String) {
    let answer = support::raw(w.gw.addr, request, WAIT).await;
    (Head::parse(&answer), answer)
}

/// `GET target` as WeChat's browser, on its own connection, with extra header lines. The
/// gateway's hash hop page is read as the step on to WeChat it is for a browser without
/// JavaScript: a 302 whose Location is the page's `<noscript>` refresh target (its other
/// headers, the state cookie among them, are kept).
async fn wechat_get(w: &World, target: &str, extra: &str) -> (Head, String) {
    let (mut head, answer) = raw(
        w,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {WECHAT_UA}\r\n{extra}Connection: close\r\n\r\n",
            w.host
        ),
    )
    .await;
    if head.status == 200 {
        if let Some(authorize) = wxgate::pages::hop::refresh_target(&answer) {
            head.status = 302;
            head.headers.push(("location".into(), authorize));
        }
    }
    (head, answer)
}

fn client() -> reqwest::Client {
    support::client()
}

/// `name=value` of the Set-Cookie whose name ends with `suffix`.
fn cookie_pair(set_cookies: &[&str], suffix: &str) -> Option<String> {
    set_cookies
        .iter()
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .find(|pair| pair.split('=').next().is_some_and(|n| n.ends_with(suffix)))
        .map(str::to_owned)
}

/// Where a login ends: the gateway's status when it starts none, or the Location the browser
/// is finally sent to plus the session cookie it got.
#[derive(Debug)]
enum Outcome {
    Status(u16),
    Landed { location: String, session: String },
}

/// Goes from the gateway's redirect to WeChat (`authorize`, with the state cookie it set)
/// through the mock's consent to the callback, and returns where the callback sends the
/// browser.
async fn finish_login(w: &World, authorize: &str, state_cookie: &str) -> Outcome {
    assert!(
        authorize.starts_with(&format!("http://{}/connect/oauth2/authorize?", w.mock)),
        "{authorize}"
    );
    let wechat = client()
        .get(authorize)
        // WeChat shows its authorize page to its own browser only.
        .header("user-agent", WECHAT_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(wechat.status(), 302, "mock authorize");
    let callback = wechat.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.starts_with(&format!("{}/_wxgate/callback?", w.origin)));
    let done = client()
        .get(&callback)
        .header("cookie", state_cookie)
        .header("user-agent", WECHAT_UA)
        .send()
        .await
        .unwrap();
    let status = done.status().as_u16();
    if status != 302 {
        return Outcome::Status(status);
    }
    let set_cookies: Vec<&str> = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    Outcome::Landed {
        location: done.headers()["location"].to_str().unwrap().to_owned(),
        session: cookie_pair(&set_cookies, "wxgate_session").expect("session cookie"),
    }
}

/// A login started by the raw request target `target` (the page WeChat's browser asked for).
async fn login_from_target(w: &World, target: &str) -> Outcome {
    let (head, answer) = wechat_get(w, target, "").await;
    let Some(authorize) = to_authorize(&head, &answer) else {
        return Outcome::Status(head.status);
    };
    let state = cookie_pair(&head.all("set-cookie"), "wxgate_state").expect("state cookie");
    finish_login(w, &authorize, &state).await
}

/// Where the gateway sends a WeChat navigation on to authorize: its hash hop page's way on
/// without JavaScript (the page a route answers), or a 302's Location.
fn to_authorize(head: &Head, answer: &str) -> Option<String> {
    match head.status {
        302 => head.get("location").map(str::to_owned),
        200 => wxgate::pages::hop::refresh_target(answer),
        _ => None,
    }
}

/// A login started at `/_wxgate/start?rd=…` (forward-auth and XHR clients).
async fn login_from_start(w: &World, rd: &str) -> Outcome {
    let mut url = url::Url::parse(&format!("{}/_wxgate/start", w.origin)).unwrap();
    url.query_pairs_mut().append_pair("rd", rd);
    // A WeChat browser: other browsers get the "open in WeChat" page from start.
    let resp = client()
        .get(url)
        .header("user-agent", WECHAT_UA)
        .send()
        .await
        .unwrap();
    let set_cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let set_cookies: Vec<&str> = set_cookies.iter().map(String::as_str).collect();
    let (_, Some(authorize)) = support::wechat::through_hop(resp).await else {
        return Outcome::Status(0);
    };
    let state = cookie_pair(&set_cookies, "wxgate_state").expect("state cookie");
    finish_login(w, &authorize, &state).await
}

/// The Location `/_wxgate/logout?rd=…` sends the browser to.
async fn logout_location(w: &World, rd: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/_wxgate/logout", w.origin)).unwrap();
    url.query_pairs_mut().append_pair("rd", rd);
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "logout rd={rd:?}");
    resp.headers()["location"].to_str().unwrap().to_owned()
}

/// The Location resolves, as a browser resolves it, to the gateway's own origin.
fn assert_same_site(w: &World, input: &str, location: &str) {
    assert!(
        !location
            .bytes()
            .any(|b| b <= 0x20 || b == 0x7f || b == b'\\'),
        "{input:?} → Location {location:?} holds whitespace, a control or a backslash"
    );
    let base = url::Url::parse(&w.origin).unwrap();
    let joined = base
        .join(location)
        .unwrap_or_else(|e| panic!("{input:?} → unparsable Location {location:?}: {e}"));
    assert_eq!(
        joined.origin(),
        base.origin(),
        "{input:?} → Location {location:?} leaves the site ({joined})"
    );
}

/// Go's `url.QueryUnescape`, as oauth2-proxy applies it to each corpus line.
fn query_unescape(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Redirect vectors of every family the brief names; used raw as the first request's
/// target, and as `rd` of logout and of the login start.
const REDIRECT_VECTORS: &[&str] = &[
    // protocol-relative
    "//evil.com",
    "///evil.com",
    "////evil.com/",
    "/\\evil.com",
    "/\\/evil.com",
    "\\\\evil.com",
    "\\/evil.com",
    // encoded, once and twice
    "/%2F%2Fevil.com",
    "/%2f%2fevil.com",
    "/%5Cevil.com",
    "/%5cevil.com",
    "/%2F/evil.com",
    "/%252F%252Fevil.com",
    "/%255Cevil.com",
    "/%25252F%25252Fevil.com",
    "/%68%74%74%70%3a%2f%2fevil.com",
    // schemes
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http:/evil.com",
    "https:/evil.com",
    "https:evil.com",
    "https:\\\\evil.com",
    "http://evil.com/",
    "https://evil.com/path",
    // userinfo and look-alike hosts
    "https://site@evil.com/",
    "https://127.0.0.1@evil.com/",
    "http://127.0.0.1.evil.com/",
    "https://evil.com%2F@127.0.0.1/",
    // whitespace and control characters
    "\t//evil.com",
    " //evil.com",
    "/\t/evil.com",
    "/ /evil.com",
    "/%09/evil.com",
    "/%20/evil.com",
    "/%0d%0a//evil.com",
    "/x%0d%0aSet-Cookie:%20a=b",
    "/x?a=%0d%0aLocation:%20https://evil.com",
    "/%00//evil.com",
    // dot segments
    "/./\\evil.com",
    "/.//evil.com",
    "/../evil.com",
    "/%2e%2e//evil.com",
    // unicode look-alikes of / \ . @
    "/%EF%BC%8F%EF%BC%8Fevil.com",
    "/%EF%BC%BCevil.com",
    "/%E3%80%82evil.com",
    "/%E2%88%95evil.com",
    "／／evil.com",
    "〱evil.com",
    "ｰevil.com",
    // nested URLs
    "/redirect?url=//evil.com",
    "/redirect?url=https%3A%2F%2Fevil.com",
];

#[tokio::test]
async fn t05_t06_login_return_url_from_any_request_target_stays_on_the_site() {
    let w = protected_root_world().await;
    // Targets the gateway must refuse before any login, and those it logs in and then
    // sends back to a page of its own; never elsewhere.
    let mut logged_in = 0;
    for target in REDIRECT_VECTORS.iter().copied().chain([
        "/app/deep/path?q=1",
        "/@evil.com",
        "/http://evil.com",
    ]) {
        let before = w.public.count();
        match login_from_target(&w, target).await {
            Outcome::Status(status) => assert!(
                status == 400,
                "{target:?}: neither refused nor a login but {status}"
            ),
            Outcome::Landed { location, .. } => {
                logged_in += 1;
                assert_same_site(&w, target, &location);
            }
        }
        assert_eq!(w.public.count(), before, "{target:?} reached an upstream");
    }
    assert!(logged_in >= 10, "only {logged_in} targets started a login");
    // The exact page comes back when it is an ordinary one (T05).
    match login_from_target(&w, "/app/deep/path?q=1").await {
        Outcome::Landed { location, .. } => assert_eq!(location, "/app/deep/path?q=1"),
        other => panic!("{other:?}"),
    }
    // A refused return URL lands on the home page, never on the hostile one.
    for (target, landing) in [
        ("//evil.com", "/"),
        ("/.//evil.com", "/"),
        ("/%20/evil.com", "/"),
        ("/%E3%80%82evil.com", "/"),
        ("/x?a=%0d%0aLocation:%20https://evil.com", "/"),
    ] {
        match login_from_target(&w, target).await {
            Outcome::Landed { location, .. } => assert_eq!(location, landing, "{target:?}"),
            other => panic!("{target:?}: {other:?}"),
        }
    }
    assert_eq!(w.private.count(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t06_t07_logout_and_start_rd_vectors_stay_on_the_site() {
    let w = default_world().await;
    for rd in REDIRECT_VECTORS {
        let location = logout_location(&w, rd).await;
        assert_same_site(&w, rd, &location);
        assert_eq!(location, "/", "logout rd={rd:?} was accepted");
        match login_from_start(&w, rd).await {
            Outcome::Landed { location, .. } => {
                assert_same_site(&w, rd, &location);
                assert_eq!(location, "/", "start rd={rd:?} was accepted");
            }
            other => panic!("start rd={rd:?}: {other:?}"),
        }
    }
    // Good values are kept exactly (T07), the public origin's absolute URLs included.
    for rd in [
        "/redirect",
        "/a/b?x=1&y=2",
        &format!("{}/page?x=1", w.origin),
    ] {
        assert_eq!(logout_location(&w, rd).await, rd);
        match login_from_start(&w, rd).await {
            Outcome::Landed { location, .. } => assert_eq!(location, rd),
            other => panic!("{rd:?}: {other:?}"),
        }
    }
    assert_eq!((w.public.count(), w.private.count()), (0, 0));
    w.gw.shutdown().await;
}

/// Every line of oauth2-proxy's open-redirect corpus, raw and query-unescaped, as `rd` of
/// logout and of the login start (followed through the mock to the final Location).
#[tokio::test]
async fn t06_open_redirect_corpus_through_logout_and_login_start() {
    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/open-redirects.txt"
    ))
    .unwrap();
    let lines: Vec<&str> = corpus.lines().collect();
    assert_eq!(lines.len(), 559, "the corpus is oauth2-proxy's 559 lines");
    let w = default_world().await;
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for line in &lines {
        for candidate in [line.to_string(), query_unescape(line)] {
            if seen.insert(candidate.clone()) {
                candidates.push(candidate);
            }
        }
    }
    let mut landed_home = 0;
    for rd in &candidates {
        let location = logout_location(&w, rd).await;
        assert_same_site(&w, rd, &location);
        assert_eq!(location, "/", "logout rd={rd:?} was accepted");
        match login_from_start(&w, rd).await {
            Outcome::Landed { location, .. } => {
                assert_same_site(&w, rd, &location);
                landed_home += usize::from(location == "/");
            }
            other => panic!("start rd={rd:?}: {other:?}"),
        }
    }
    // The corpus is hostile throughout: every entry is refused and the browser goes home.
    assert_eq!(
        landed_home,
        candidates.len(),
        "some corpus entries were accepted"
    );
    assert_eq!((w.public.count(), w.private.count()), (0, 0));
    w.gw.shutdown().await;
}

/// How a path trick must end.
#[derive(Debug, Clone, Copy)]
enum PathEnd {
    /// 400: the gateway refuses the path.
    Refused,
    /// A login (302 to WeChat): treated as protected; nothing reaches any upstream.
    Login,
    /// Forwarded to the public upstream with exactly this path.
    Public(&'static str),
}

#[tokio::test]
async fn t56_t69_path_tricks_never_reach_a_protected_upstream_without_a_session() {
    let w = default_world().await;
    use PathEnd::*;
    let table: &[(&str, PathEnd)] = &[
        // T56 dot segments
        ("/public/../admin/x", Login),
        ("/public/./../admin/x", Login),
        // T57 encoded dots
        ("/public/%2e%2e/admin/x", Login),
        ("/public/%2E%2E/admin/x", Login),
        ("/public/.%2e/admin/x", Login),
        ("/public/%2e./admin/x", Login),
        // T58 encoded slashes
        ("/public/%2fadmin", Refused),
        ("/public%2f..%2fadmin", Refused),
        ("/public/..%2fadmin", Refused),
        ("/admin%2fx", Refused),
        // T59 backslashes
        ("/public/..%5cadmin", Refused),
        ("/public\\..\\admin", Refused),
        ("/public/%5c../admin", Refused),
        // T60 merged slashes
        ("//admin/x", Login),
        ("///admin/x", Login),
        ("/public//../admin/x", Login),
        // T61 segment-aware prefixes, and the directory itself
        ("/adminx", Public("/adminx")),
        ("/admin-x/y", Public("/admin-x/y")),
        ("/admin", Login),
        ("/publicx", Public("/publicx")),
        // T62 encoded fragment
        ("/public/secret%23/../../admin/x", Refused),
        ("/public/secret%23/endpoint", Refused),
        // T63 query and fragment are not the path
        ("/admin/x?next=/public/", Login),
        ("/admin/x#/public/", Login),
        // T64 path parameters
        ("/public;/../admin/x", Login),
        ("/public/..;/admin/x", Refused),
        ("/admin;jsessionid=1/x", Login),
        ("/admin;x", Login),
        ("/;x/admin/x", Login),
        // T65 NUL, overlong UTF-8, double encoding
        ("/public/%00/../admin/x", Refused),
        ("/public/%c0%ae%c0%ae/admin/x", Refused),
        ("/public/%252e%252e/admin/x", Refused),
        ("/public/%2500", Refused),
        // double encoding completed by decoding (a finding of the path_route fuzz target)
        ("/public/%252%65%252%65/admin/x", Refused),
        // T66 what the upstream gets is what was decided on
        ("/public/a/./b//c", Public("/public/a/b/c")),
        ("/public/%61%62c", Public("/public/abc")),
        ("/admin/%2e%2e/public/x", Public("/public/x")),
        ("/public/a;b/c", Public("/public/a;b/c")),
        // T69 case variants of a protected prefix
        ("/ADMIN/x", Login),
        ("/Admin", Login),
        ("/ADMIN;x/y", Login),
        ("/%41DMIN/x", Login),
        ("/Public/../admin/x", Login),
        // callback lookalikes (T22) are not the callback
        ("/_wxgate/callback/", Refused),
        ("/_wxgate/callback;x", Refused),
    ];
    for (target, end) in table {
        let before = w.public.count();
        let (head, answer) = wechat_get(&w, target, "").await;
        match end {
            Refused => assert!(
                matches!(head.status, 400 | 404),
                "{target}: {}",
                &answer[..answer.len().min(200)]
            ),
            Login => {
                let location = to_authorize(&head, &answer).unwrap_or_default();
                assert!(location.contains("/connect/oauth2/authorize?"), "{target}");
            }
            Public(path) => {
                assert_eq!(head.status, 200, "{target}");
                assert_eq!(w.public.last().uri, *path, "{target}");
            }
        }
        let arrived = w.public.count() - before;
        assert_eq!(
            arrived,
            usize::from(matches!(end, Public(_))),
            "{target}: {arrived} requests reached the public upstream"
        );
    }
    // T67 absolute form: the target's host must be the Host.
    let (head, answer) = raw(
        &w,
        &format!(
            "GET http://{}/admin/x HTTP/1.1\r\nHost: {}\r\nUser-Agent: {WECHAT_UA}\r\nConnection: close\r\n\r\n",
            w.host, w.host
        ),
    )
    .await;
    assert!(to_authorize(&head, &answer).is_some(), "a login");
    let (head, _) = raw(
        &w,
        &format!(
            "GET http://evil.test/public/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            w.host
        ),
    )
    .await;
    assert_eq!(head.status, 400);
    // T68 preflight and method override are not navigations: 401, nothing forwarded.
    for request in [
        format!(
            "OPTIONS /admin/x HTTP/1.1\r\nHost: {}\r\nOrigin: https://evil.test\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
            w.host
        ),
        format!(
            "POST /admin/x HTTP/1.1\r\nHost: {}\r\nX-HTTP-Method-Override: GET\r\nUser-Agent: {WECHAT_UA}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            w.host
        ),
    ] {
        assert_eq!(raw(&w, &request).await.0.status, 401, "{request}");
    }
    assert_eq!(w.private.count(), 0, "a protected upstream was reached");
    w.gw.shutdown().await;
}

/// Logs in through the mock and returns the session cookie (`name=value`).
async fn session(w: &World) -> String {
    match login_from_target(w, "/admin/start").await {
        Outcome::Landed { session, .. } => session,
        other => panic!("login failed: {other:?}"),
    }
}

fn identity_of(seen: &support::upstream::Seen) -> Vec<String> {
    seen.headers
        .get_all("x-wechat-identity")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn verify(token: &str) -> wxgate::identity::Claims {
    let source = wxgate::identity::KeySource {
        algorithm: wxgate::identity::Algorithm::HS256,
        key_file: None,
        secret: Some(IDENTITY_SECRET.into()),
    };
    let keys = wxgate::identity::KeySet::load(&source, &[]).unwrap();
    keys.verify(token, "wxgate", "wxgate-upstream").unwrap()
}

#[tokio::test]
async fn t42_t50_forged_identity_and_forwarding_headers_never_reach_the_upstream() {
    let w = default_world().await;
    let cookie = session(&w).await;
    let forged = "\
X-WeChat-Identity: forged\r\nx-wechat-identity: forged\r\nX_WeChat_Identity: forged\r\n\
X.WeChat.Identity: forged\r\nX-WECHAT-OPENID: forged\r\nx_wechat_openid: forged\r\n\
X-WeChat-Nickname: forged\r\nX-Forwarded-User: forged\r\nX_Forwarded_Email: forged\r\n\
Remote-User: forged\r\nRemote_User: forged\r\nX-Remote-User: forged\r\nX-Auth-Request-User: forged\r\n\
X-Auth_Request_User: forged\r\nX.Authenticated.User: forged\r\nX-Original-URL: /public/\r\n\
X-Rewrite-URL: /public/\r\nX-Forwarded-Uri: /public/\r\nX-Forwarded-For: 6.6.6.6\r\n\
X_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 1\r\n\
X-Forwarded-Prefix: /public\r\n";
    let spoofed = [
        "forged",
        "6.6.6.6",
        "/public/",
        "/public",
        "evil.test",
        "1",
        "for=6.6.6.6",
    ];
    // T42/T44/T47/T50 on a protected route with a session, T43 on a public one, and T45:
    // a Connection header naming the gateway's own headers.
    for (target, connection) in [
        ("/admin/echo", "keep-alive"),
        ("/public/echo", "keep-alive"),
        (
            "/admin/echo",
            "close, X-WeChat-Identity, X-Forwarded-For, X-Forwarded-Proto",
        ),
    ] {
        let (head, _) = raw(
            &w,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {WECHAT_UA}\r\nCookie: {cookie}\r\n{forged}Connection: {connection}\r\n\r\n",
                w.host
            ),
        )
        .await;
        assert_eq!(head.status, 200, "{target}");
        let seen = if target.starts_with("/admin") {
            w.private.last()
        } else {
            w.public.last()
        };
        for (name, value) in &seen.headers {
            let value = value.to_str().unwrap_or("");
            assert!(
                !spoofed.contains(&value),
                "{target}: {name}: {value} reached the upstream"
            );
        }
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "{target}");
        assert_eq!(seen.headers["x-forwarded-proto"], "http", "{target}");
        assert_eq!(
            seen.headers["x-forwarded-host"],
            w.host.as_str(),
            "{target}"
        );
        let ids = identity_of(&seen);
        if target.starts_with("/admin") {
            assert_eq!(ids.len(), 1, "{target}: exactly the gateway's identity");
            assert!(!verify(&ids[0]).openid.is_empty());
        } else {
            assert!(ids.is_empty(), "{target}: identity on a public route");
        }
    }
    // T47: a spoofed identity does not change who the upstream is told it is.
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t49_health_check_user_agents_get_no_pass() {
    let w = default_world().await;
    for ua in ["GoogleHC/1.0", "kube-probe/1.30", "ELB-HealthChecker/2.0"] {
        let request = format!(
            "GET /admin/x HTTP/1.1\r\nHost: {}\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n",
            w.host
        );
        // Not WeChat's browser: the route's `deny` page, never the content.
        assert_eq!(raw(&w, &request).await.0.status, 403, "{ua}");
    }
    assert_eq!(w.private.count(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t70_t78_framing_tricks_are_refused_or_neutralised() {
    let w = default_world().await;
    let h = w.host.clone();
    // Refused outright: 400 and nothing forwarded.
    let refused = [
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /public/x HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!("POST /public/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: +3\r\n\r\nabc"),
        format!("POST /public/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3, 4\r\n\r\nabcd"),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
        ),
        format!("POST /public/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0x10\r\n\r\n"),
        format!("GET /public/x HTTP/1.1\r\nHost: {h}\r\nX-A: a\r\n b\r\n\r\n"),
        format!("GET /public/x HTTP/1.1\r\nHost: {h}\r\nX-WeChat-Identity: a\r\n forged\r\n\r\n"),
        format!("GET /public/x HTTP/1.1\r\nHost: {h}\r\nX-A: a\rb\r\n\r\n"),
        format!("GET /public/x HTTP/1.1\r\nHost: {h}\r\nX-A: a\0b\r\n\r\n"),
        "GET /public/x HTTP/1.1\r\n\r\n".to_owned(),
        format!("GET /public/x HTTP/1.1\r\nHost: {h}\r\nHost: evil.test\r\n\r\n"),
        "GET /public/x HTTP/1.1\r\nHost: gw.test:abc\r\n\r\n".to_owned(),
    ];
    for request in &refused {
        let (head, answer) = raw(&w, request).await;
        assert_eq!(head.status, 400, "{request:?}: {answer:.120}");
    }
    assert_eq!(w.public.count(), 0, "a refused request was forwarded");

    // T73: an overflowing chunk size: no panic, the request goes nowhere whole.
    let (head, _) = raw(
        &w,
        &format!("POST /public/x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    )
    .await;
    assert!(matches!(head.status, 400 | 413 | 502), "{}", head.status);
    assert!(w.public.seen().iter().all(|s| s.body_len == 0));

    // T70: CL+TE is read as chunked, the connection closed, the smuggled rest never parsed.
    let before = w.public.count();
    let answer = support::raw(
        w.gw.addr,
        format!(
            "POST /public/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGPOST /admin/x HTTP/1.1\r\nHost: {h}\r\nUser-Agent: {WECHAT_UA}\r\n\r\n"
        )
        .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(w.public.count(), before + 1);
    let seen = w.public.last();
    assert_eq!((seen.uri.as_str(), seen.body_len), ("/public/x", 0));
    // T78: the upstream gets framing the gateway made, not the client's.
    assert!(
        !seen.headers.contains_key("transfer-encoding")
            || !seen.headers.contains_key("content-length")
    );

    // T76/T77: pipelined requests are each judged on their own.
    let answer = support::raw(
        w.gw.addr,
        format!(
            "GET /public/x HTTP/1.1\r\nHost: {h}\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: {h}\r\nUser-Agent: {WECHAT_UA}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        WAIT,
    )
    .await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    // The second is a login: the hash hop page on to WeChat.
    assert_eq!(statuses, ["200", "200"], "{answer}");
    assert!(answer.contains("http-equiv=\"refresh\""), "{answer}");

    // T80: an upgrade the upstream answers with 200 is no tunnel; what follows is HTTP.
    let answer = support::raw(
        w.gw.addr,
        format!(
            "GET /status/200 HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: {h}\r\nUser-Agent: {WECHAT_UA}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        WAIT,
    )
    .await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    // The second is a login: the hash hop page on to WeChat.
    assert_eq!(statuses, ["200", "200"], "{answer}");
    assert!(answer.contains("http-equiv=\"refresh\""), "{answer}");
    assert_eq!(w.private.count(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t83_a_slow_header_sender_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(|c, _, _| {
        c.server.limits.header_read_timeout = Duration::from_millis(800);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(w.gw.addr).await.unwrap();
    stream
        .write_all(format!("GET /public/x HTTP/1.1\r\nHost: {}\r\nX-Slow: ", w.host).as_bytes())
        .await
        .unwrap();
    // One byte every 100 ms keeps the connection busy but never finishes the head. The
    // gateway must hang up on its own long before this loop would end.
    let mut cut_off = false;
    for _ in 0..100 {
        if stream.write_all(b"a").await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut_off, "a slow header sender kept its connection for 10 s");
    assert_eq!(w.public.count(), 0);
    // Everyone else is still served.
    assert_eq!(support::get(&w.gw, "/public/ok").await.status(), 200);
    w.gw.shutdown().await;
}

async fn ws_handshake(
    w: &World,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<u16, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws", w.host).into_client_request().unwrap();
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, response)) => {
            ws.send(tokio_tungstenite::tungstenite::Message::text("ping"))
                .await
                .unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
            Ok(response.status().as_u16())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16().to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn t79_websocket_upgrades_need_a_session_and_a_same_site_origin() {
    let w = world(|c, _, _| {
        c.server.websocket_origins = vec![url::Url::parse("https://app.example.com").unwrap()];
    })
    .await;
    assert_eq!(ws_handshake(&w, None, None).await, Err("401".into()));
    assert_eq!(
        w.private.count(),
        0,
        "no session: the upstream sees nothing"
    );
    let cookie = session(&w).await;
    let before = w.private.count();
    for foreign in [
        "https://evil.test",
        "null",
        "http://127.0.0.1.evil.test",
        "https://app.example.com.evil.test",
    ] {
        assert_eq!(
            ws_handshake(&w, Some(&cookie), Some(foreign)).await,
            Err("403".into()),
            "{foreign}"
        );
    }
    assert_eq!(
        w.private.count(),
        before,
        "a foreign origin reached the upstream"
    );
    for allowed in [
        Some(w.origin.as_str()),
        Some("https://app.example.com"),
        None,
    ] {
        assert_eq!(
            ws_handshake(&w, Some(&cookie), allowed).await,
            Ok(101),
            "{allowed:?}"
        );
        let handshake = w.private.last();
        assert_eq!(handshake.uri, "/ws");
        assert_eq!(
            identity_of(&handshake).len(),
            1,
            "the handshake carries the identity"
        );
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t01_t33_cookies_carry_the_host_prefix_when_secure() {
    let w = world(|c, _, _| c.session.cookie_secure = true).await;
    let (head, answer) = wechat_get(&w, "/admin/x", "").await;
    assert!(to_authorize(&head, &answer).is_some());
    let state = head.all("set-cookie");
    assert_eq!(state.len(), 1);
    let state = state[0];
    assert!(state.starts_with("__Host-wxgate_state="), "{state}");
    for attribute in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(state.contains(attribute), "{state} lacks {attribute}");
    }
    assert!(!state.contains("Domain"), "{state}");
    assert_eq!(head.get("cache-control"), Some("no-store"));
    let location = head.get("location").unwrap();
    let state_param = location
        .split("state=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap();
    assert!(state_param.len() >= 32 && state_param.bytes().all(|b| b.is_ascii_alphanumeric()));

    // The callback: session cookie with the same rules; the state cookie cleared (T21).
    let pair = state.split(';').next().unwrap();
    let wechat = client()
        .get(location)
        // WeChat shows its authorize page to its own browser only.
        .header("user-agent", WECHAT_UA)
        .send()
        .await
        .unwrap();
    let callback = wechat.headers()["location"].to_str().unwrap().to_owned();
    let done = client()
        .get(&callback)
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    assert_eq!(done.headers()["referrer-policy"], "no-referrer");
    assert_eq!(done.headers()["cache-control"], "no-store");
    let location = done.headers()["location"].to_str().unwrap();
    assert!(!location.contains("code=") && !location.contains("state="));
    let cookies: Vec<&str> = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("__Host-wxgate_session="))
        .expect("__Host- session cookie");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attribute), "{session} lacks {attribute}");
    }
    assert!(!session.contains("Domain"), "{session}");
    let value = session
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1;
    assert_eq!(value.len(), 43, "256-bit id");
    let cleared = cookies
        .iter()
        .find(|c| c.starts_with("__Host-wxgate_state="))
        .expect("state cookie cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The un-prefixed name is somebody else's cookie: it is no session.
    let (head, _) = wechat_get(
        &w,
        "/admin/x",
        &format!("Cookie: wxgate_session={value}\r\n"),
    )
    .await;
    assert_eq!(head.status, 302);
    let (head, _) = wechat_get(
        &w,
        "/admin/x",
        &format!("Cookie: __Host-wxgate_session={value}\r\n"),
    )
    .await;
    assert_eq!(head.status, 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_cookie_domain_gives_secure_prefixed_domain_cookies() {
    let w = world(|c, _, _| {
        c.session.cookie_secure = true;
        c.session.cookie_domain = Some("127.0.0.1".into());
    })
    .await;
    let (head, _) = wechat_get(&w, "/admin/x", "").await;
    let state = head.all("set-cookie")[0];
    assert!(state.starts_with("__Secure-wxgate_state="), "{state}");
    assert!(state.contains("Domain=127.0.0.1"), "{state}");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t36_damaged_session_and_state_cookies_mean_a_fresh_login_never_a_500() {
    let w = default_world().await;
    let good = session(&w).await;
    let value = good.split_once('=').unwrap().1.to_owned();
    let mut tampered = value.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let session_cookies: Vec<Vec<u8>> = vec![
        format!("wxgate_session={tampered}").into_bytes(),
        format!("wxgate_session={}", &value[..20]).into_bytes(),
        format!("wxgate_session={value}{value}").into_bytes(),
        format!("wxgate_session={}", "A".repeat(8 * 1024)).into_bytes(),
        format!("wxgate_session={value}; wxgate_session={tampered}").into_bytes(),
        format!("wxgate_session={value}; wxgate_session={value}").into_bytes(),
        [
            b"wxgate_session=".as_slice(),
            &[0xff, 0xfe, 0xc3, 0x28],
            value.as_bytes(),
        ]
        .concat(),
        b"wxgate_session=\"\"".to_vec(),
        b"wxgate_session".to_vec(),
        b"=; ;;; wxgate_session=%00".to_vec(),
    ];
    for cookie in &session_cookies {
        let request = [
            format!(
                "GET /admin/x HTTP/1.1\r\nHost: {}\r\nUser-Agent: {WECHAT_UA}\r\nCookie: ",
                w.host
            )
            .as_bytes(),
            cookie,
            b"\r\nConnection: close\r\n\r\n",
        ]
        .concat();
        let (head, answer) = raw_bytes(&w, &request).await;
        assert!(
            to_authorize(&head, &answer).is_some(),
            "{:?}",
            String::from_utf8_lossy(cookie)
        );
    }
    // Past the header limit: 431, never a 500.
    let (head, _) = wechat_get(
        &w,
        "/admin/x",
        &format!("Cookie: wxgate_session={}\r\n", "A".repeat(40 * 1024)),
    )
    .await;
    assert_eq!(head.status, 431);

    // Damaged state cookies: the callback refuses before WeChat is asked anything.
    let (head, _) = wechat_get(&w, "/admin/x", "").await;
    let state_pair = cookie_pair(&head.all("set-cookie"), "wxgate_state").unwrap();
    let state_value = state_pair.split_once('=').unwrap().1.to_owned();
    let location = head.get("location").unwrap().to_owned();
    let state = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let exchanged = codes_exchanged(w.mock).await;
    let state_cookies = [
        format!("wxgate_state={}", &state_value[..state_value.len() - 4]),
        format!("wxgate_state={state_value}AAAA"),
        format!("wxgate_state=A{}", &state_value[1..]),
        format!("wxgate_state={}", "A".repeat(8 * 1024)),
        format!("wxgate_state={state_value}; wxgate_state={state_value}"),
        "wxgate_state=".to_owned(),
    ];
    for cookie in &state_cookies {
        let (head, _) = wechat_get(
            &w,
            &format!("/_wxgate/callback?code=0abc&state={state}"),
            &format!("Cookie: {cookie}\r\n"),
        )
        .await;
        assert_eq!(head.status, 400, "{cookie:.60}");
    }
    assert_eq!(codes_exchanged(w.mock).await, exchanged);
    assert_eq!(w.public.count(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t11_t17_callbacks_that_are_not_this_browsers_login_never_exchange_a_code() {
    let w = default_world().await;
    // A real pending login, to have a real state and cookie to misuse.
    let (head, _) = wechat_get(&w, "/admin/x", "").await;
    let state_pair = cookie_pair(&head.all("set-cookie"), "wxgate_state").unwrap();
    let location = head.get("location").unwrap().to_owned();
    let state = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let (other, _) = wechat_get(&w, "/admin/y", "").await;
    let other_pair = cookie_pair(&other.all("set-cookie"), "wxgate_state").unwrap();
    let cases = [
        // T11 no state cookie; T17 a victim without the attacker's cookie
        (format!("code=0abc&state={state}"), String::new()),
        // T12 a state cookie of another login
        (format!("code=0abc&state={state}"), other_pair.clone()),
        // T15 shapes: missing, too long, not alphanumeric, twice, code twice
        ("code=0abc".to_owned(), state_pair.clone()),
        (format!("code=0abc&state={state}x"), state_pair.clone()),
        (
            format!("code=0abc&state={}", "a".repeat(129)),
            state_pair.clone(),
        ),
        ("code=0abc&state=ab-_cd".to_owned(), state_pair.clone()),
        (
            format!("code=0abc&state={state}&state={state}"),
            state_pair.clone(),
        ),
        (
            format!("code=0abc&code=0def&state={state}"),
            state_pair.clone(),
        ),
    ];
    for (query, cookie) in &cases {
        let extra = if cookie.is_empty() {
            String::new()
        } else {
            format!("Cookie: {cookie}\r\n")
        };
        let (head, _) = wechat_get(&w, &format!("/_wxgate/callback?{query}"), &extra).await;
        assert_eq!(head.status, 400, "{query} with {cookie:.30}");
        assert!(
            !head
                .all("set-cookie")
                .iter()
                .any(|c| c.starts_with("wxgate_session="))
        );
        assert_eq!(head.get("referrer-policy"), Some("no-referrer"));
    }
    // T22: the callback is GET only.
    let (head, _) = raw(
        &w,
        &format!(
            "POST /_wxgate/callback?code=0abc&state={state} HTTP/1.1\r\nHost: {}\r\nCookie: {state_pair}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            w.host
        ),
    )
    .await;
    assert_eq!(head.status, 405);
    assert_eq!(mock_stats(w.mock).await["/sns/oauth2/access_token"], 0);
    // T16: no code is a refusal: 403, no session, the state is used up.
    let (head, _) = wechat_get(
        &w,
        &format!("/_wxgate/callback?state={state}"),
        &format!("Cookie: {state_pair}\r\n"),
    )
    .await;
    assert_eq!(head.status, 403);
    assert!(
        !head
            .all("set-cookie")
            .iter()
            .any(|c| c.starts_with("wxgate_session="))
    );
    assert_eq!(w.private.count(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t13_t14_a_state_cookie_replayed_after_use_or_after_ten_minutes_is_refused() {
    let w = default_world().await;
    let (head, _) = wechat_get(&w, "/admin/x", "").await;
    let state_pair = cookie_pair(&head.all("set-cookie"), "wxgate_state").unwrap();
    let authorize = head.get("location").unwrap().to_owned();
    match finish_login(&w, &authorize, &state_pair).await {
        Outcome::Landed { location, .. } => assert_eq!(location, "/admin/x"),
        other => panic!("{other:?}"),
    }
    let exchanged = codes_exchanged(w.mock).await;
    assert_eq!(exchanged, 1);
    // A fresh code for the same state, sent with the copy of the state cookie taken before
    // the login finished: a replay, refused before WeChat is asked.
    let again = client()
        .get(&authorize)
        // WeChat shows its authorize page to its own browser only.
        .header("user-agent", WECHAT_UA)
        .send()
        .await
        .unwrap();
    let callback = again.headers()["location"].to_str().unwrap().to_owned();
    let replay = client()
        .get(&callback)
        .header("cookie", &state_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(codes_exchanged(w.mock).await, exchanged);

    // A state cookie sealed eleven minutes ago (the test knows the secret, as an attacker
    // who kept an old cookie has one): expired, refused.
    let key = wxgate::login::StateKey::derive(SESSION_SECRET.as_bytes()).unwrap();
    let mut old = wxgate::login::PendingLogins::default();
    let then = std::time::SystemTime::now() - Duration::from_secs(11 * 60);
    let target = wxgate::login::ReturnUrl::from_request_target("/admin/x").unwrap();
    let state = old.begin(target, wxgate::login::AuthScope::Base, then);
    let cookie = old.to_cookie(
        &key,
        &wxgate::login::CookieSpec::new("wxgate_state", false, None),
    );
    let (head, _) = wechat_get(
        &w,
        &format!("/_wxgate/callback?code=0abc&state={state}"),
        &format!("Cookie: wxgate_state={}\r\n", cookie.value()),
    )
    .await;
    assert_eq!(head.status, 400);
    assert_eq!(codes_exchanged(w.mock).await, exchanged);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t34_t35_a_planted_session_is_never_adopted_and_a_new_login_revokes_the_old_one() {
    let w = default_world().await;
    // A well-formed id the attacker chose and planted before the victim logs in.
    let planted = "wxgate_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (head, _) = wechat_get(&w, "/admin/x", &format!("Cookie: {planted}\r\n")).await;
    assert_eq!(head.status, 302, "a planted id is no session");
    let state = cookie_pair(&head.all("set-cookie"), "wxgate_state").unwrap();
    let first = match finish_login(
        &w,
        head.get("location").unwrap(),
        &format!("{state}; {planted}"),
    )
    .await
    {
        Outcome::Landed { session, .. } => session,
        other => panic!("{other:?}"),
    };
    assert_ne!(first, planted, "the planted id was adopted");
    let (head, _) = wechat_get(&w, "/admin/x", &format!("Cookie: {planted}\r\n")).await;
    assert_eq!(head.status, 302, "the planted id became a session");
    let (head, _) = wechat_get(&w, "/admin/x", &format!("Cookie: {first}\r\n")).await;
    assert_eq!(head.status, 200);

    // T35: logged in as V1, the browser logs in again and gets V2; V1 is dead.
    let (head, _) = wechat_get(
        &w,
        "/_wxgate/start?rd=/admin/y",
        &format!("Cookie: {first}\r\n"),
    )
    .await;
    let state = cookie_pair(&head.all("set-cookie"), "wxgate_state").unwrap();
    let second = match finish_login(
        &w,
        head.get("location").unwrap(),
        &format!("{state}; {first}"),
    )
    .await
    {
        Outcome::Landed { session, location } => {
            assert_eq!(location, "/admin/y");
            session
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(second, first);
    assert_eq!(
        wechat_get(&w, "/admin/x", &format!("Cookie: {first}\r\n"))
            .await
            .0
            .status,
        302
    );
    assert_eq!(
        wechat_get(&w, "/admin/x", &format!("Cookie: {second}\r\n"))
            .await
            .0
            .status,
        200
    );
    // T41: an id in the URL is not a session.
    let id = second.split_once('=').unwrap().1;
    for target in [
        format!("/admin/x?session={id}"),
        format!("/admin/x;jsessionid={id}"),
    ] {
        assert_eq!(wechat_get(&w, &target, "").await.0.status, 302, "{target}");
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t18_two_tabs_finish_their_logins_in_reverse_order() {
    let w = default_world().await;
    let (a, _) = wechat_get(&w, "/admin/tab-a", "").await;
    let cookie_a = cookie_pair(&a.all("set-cookie"), "wxgate_state").unwrap();
    // The second tab's start sees the first's pending login (the cookie is on Path=/).
    let (b, _) = wechat_get(&w, "/admin/tab-b", &format!("Cookie: {cookie_a}\r\n")).await;
    let cookie_ab = cookie_pair(&b.all("set-cookie"), "wxgate_state").unwrap();
    let b_done = finish_login(&w, b.get("location").unwrap(), &cookie_ab).await;
    let a_done = finish_login(&w, a.get("location").unwrap(), &cookie_ab).await;
    match (b_done, a_done) {
        (Outcome::Landed { location: lb, .. }, Outcome::Landed { location: la, .. }) => {
            assert_eq!((la.as_str(), lb.as_str()), ("/admin/tab-a", "/admin/tab-b"));
        }
        other => panic!("{other:?}"),
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t40_an_upstream_cannot_set_the_gateways_cookies() {
    let w = world(|c, public, _| {
        c.routes
            .push(support::route("/set-cookie/", public.addr, Scope::Public));
    })
    .await;
    for name in ["wxgate_session", "wxgate_state", "WXGATE_SESSION"] {
        let resp = support::get(&w.gw, &format!("/set-cookie/{name}")).await;
        let cookies: Vec<&str> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["app=1; Path=/"], "{name}");
    }
    w.gw.shutdown().await;
}

const FORGED_CALLBACK: &str = "/_wxgate/callback?code=0abc&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[tokio::test]
async fn t19_t20_a_client_hammering_bad_callbacks_is_stopped_and_its_logins_starts_are_not() {
    let w = world(|c, _, _| {
        c.server.limits.login_rate = 6;
        c.server.limits.login_burst = 3;
    })
    .await;
    // Starting logins costs nothing: far beyond the burst, every start is a redirect.
    for _ in 0..20 {
        assert_eq!(wechat_get(&w, "/admin/x", "").await.0.status, 302);
    }
    // Refused callbacks spend the client's bucket: three forged states, then 429.
    for _ in 0..3 {
        assert_eq!(wechat_get(&w, FORGED_CALLBACK, "").await.0.status, 400);
    }
    let (head, _) = wechat_get(&w, FORGED_CALLBACK, "").await;
    assert_eq!(head.status, 429);
    let retry: u64 = head.get("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    // Scripts get the 429 as JSON.
    let xhr = client()
        .get(format!("{}{FORGED_CALLBACK}", w.origin))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 429);
    assert!(xhr.headers().contains_key("retry-after"));
    let body: serde_json::Value = xhr.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests");
    assert_eq!(mock_stats(w.mock).await["/sns/oauth2/access_token"], 0);
    // Proxied traffic, sessions and login starts are not limited.
    assert_eq!(support::get(&w.gw, "/public/x").await.status(), 200);
    assert_eq!(wechat_get(&w, "/admin/x", "").await.0.status, 302);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn five_hundred_visitors_behind_one_nat_address_all_log_in_with_the_default_limits() {
    let defaults = wxgate::config::LimitsConfig::default();
    let w = world(move |c, _, _| c.server.limits = defaults).await;
    // Every visitor comes from 127.0.0.1, like a district behind one carrier-NAT address,
    // all within the minute (many at once).
    let mut visitors = tokio::task::JoinSet::new();
    for i in 0..500 {
        let (origin, mock) = (w.origin.clone(), w.mock);
        visitors.spawn(async move {
            let browser = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .cookie_store(true)
                .user_agent(WECHAT_UA)
                .no_proxy()
                .build()
                .unwrap();
            let start = browser
                .get(format!("{origin}/admin/visitor-{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), 200, "visitor {i} start: the hash hop page");
            let authorize = support::wechat::authorize_target(start).await;
            assert!(authorize.contains(&mock.to_string()));
            let consent = browser.get(&authorize).send().await.unwrap();
            let callback = consent.headers()["location"].to_str().unwrap().to_owned();
            let back = browser.get(&callback).send().await.unwrap();
            assert_eq!(back.status(), 302, "visitor {i} callback");
            assert_eq!(
                back.headers()["location"],
                format!("/admin/visitor-{i}").as_str()
            );
            let page = browser
                .get(format!("{origin}/admin/visitor-{i}"))
                .send()
                .await
                .unwrap();
            page.status().as_u16()
        });
        if i % 50 == 49 {
            // Arrivals in waves, as a venue's crowd scans a QR code.
            tokio::task::yield_now().await;
        }
    }
    let mut landed = 0;
    while let Some(status) = visitors.join_next().await {
        assert_eq!(status.unwrap(), 200);
        landed += 1;
    }
    assert_eq!(landed, 500);
    assert_eq!(codes_exchanged(w.mock).await, 500);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t47_t48_the_rate_limit_keys_on_the_real_client_behind_trusted_proxies_only() {
    // Untrusted peer: its X-Forwarded-For is ignored, every request is 127.0.0.1's.
    let w = world(|c, _, _| {
        c.server.limits.login_rate = 6;
        c.server.limits.login_burst = 1;
    })
    .await;
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let forged =
        async |w: &World, ip: &str| wechat_get(w, FORGED_CALLBACK, &xff(ip)).await.0.status;
    assert_eq!(forged(&w, "203.0.113.1").await, 400);
    assert_eq!(forged(&w, "203.0.113.2").await, 429);
    w.gw.shutdown().await;
    // Behind a trusted proxy (127.0.0.0/8) the right-most untrusted hop is the client.
    let w = world(|c, _, _| {
        c.server.limits.login_rate = 6;
        c.server.limits.login_burst = 1;
        c.server.trusted_proxies = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    assert_eq!(forged(&w, "203.0.113.1, 10.0.0.5").await, 400);
    assert_eq!(forged(&w, "203.0.113.2").await, 400);
    assert_eq!(forged(&w, "198.51.100.9, 203.0.113.1").await, 429);
    assert_eq!(forged(&w, "203.0.113.2").await, 429);
    let before = w.public.count();
    support::client()
        .get(support::url(&w.gw, "/public/x"))
        .header("x-forwarded-for", "203.0.113.1, 10.0.0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(w.public.count(), before + 1);
    assert_eq!(
        w.public.last().headers["x-forwarded-for"],
        "203.0.113.1, 10.0.0.5, 127.0.0.1"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t51_t54_identity_tokens_pin_alg_and_kid_and_survive_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let old_key = dir.path().join("old.pem");
    let new_key = dir.path().join("new.pem");
    for path in [&old_key, &new_key] {
        let pem = wxgate::identity::generate_pem(wxgate::identity::Algorithm::ES256).unwrap();
        std::fs::write(path, pem).unwrap();
    }
    let es256 = |key: &std::path::Path| {
        let key = key.to_owned();
        move |c: &mut Config, _: &Upstream, _: &Upstream| {
            c.identity.algorithm = wxgate::identity::Algorithm::ES256;
            c.identity.secret = wxgate::Secret::default();
            c.identity.key_file = Some(key);
        }
    };
    // Before the rotation: a token signed with the old key.
    let w = world(es256(&old_key)).await;
    let cookie = session(&w).await;
    wechat_get(&w, "/admin/echo", &format!("Cookie: {cookie}\r\n")).await;
    let old_token = identity_of(&w.private.last()).remove(0);
    w.gw.shutdown().await;
    // After it: the new key signs, the old one is still published.
    let rotated = {
        let new_key = new_key.clone();
        let old_key = old_key.clone();
        move |c: &mut Config, u: &Upstream, p: &Upstream| {
            es256(&new_key)(c, u, p);
            c.identity.previous_keys = vec![wxgate::config::PreviousKey {
                algorithm: wxgate::identity::Algorithm::ES256,
                key_file: Some(old_key),
                secret: wxgate::Secret::default(),
            }];
        }
    };
    let w = world(rotated).await;
    let jwks = client()
        .get(format!("{}/_wxgate/jwks.json", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    let jwks = jwks.bytes().await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&jwks).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert!(key["kid"].is_string());
        assert!(key.get("d").is_none(), "private member published");
    }
    // An upstream that fetched the new JWKS still accepts the token minted before.
    let claims = wxgate::identity::verify_with_jwks(&old_token, &jwks, "wxgate", "wxgate-upstream")
        .expect("a token of the previous key verifies mid-rotation");
    assert!(!claims.jti.is_empty());
    let cookie = session(&w).await;
    wechat_get(&w, "/admin/echo", &format!("Cookie: {cookie}\r\n")).await;
    let new_token = identity_of(&w.private.last()).remove(0);
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    let old_header = jsonwebtoken::decode_header(&old_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert!(header.kid.is_some() && old_header.kid.is_some());
    assert_ne!(header.kid, old_header.kid, "the new key signs");
    let claims =
        wxgate::identity::verify_with_jwks(&new_token, &jwks, "wxgate", "wxgate-upstream").unwrap();
    assert!(claims.exp - claims.iat <= 300, "short-lived");
    assert!(!claims.jti.is_empty());
    // A token whose alg is swapped for the key's (HS256 with the public key) is refused.
    let forged = {
        let mut parts = new_token.splitn(2, '.');
        let _ = parts.next();
        let swapped = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            format!(
                r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#,
                header.kid.unwrap()
            ),
        );
        format!("{swapped}.{}", parts.next().unwrap())
    };
    assert!(
        wxgate::identity::verify_with_jwks(&forged, &jwks, "wxgate", "wxgate-upstream").is_err()
    );
    w.gw.shutdown().await;
}

/// Where `needle` occurs in `haystack`, as a short excerpt for the failure message.
fn find_leak(haystack: &str, needle: &str) -> Option<String> {
    haystack.find(needle).map(|i| {
        let start = haystack[..i]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(j, _)| j);
        haystack[start..].chars().take(200).collect()
    })
}

/// A WeChat web token as the mock mints them: `93_` and 107 base64url characters.
fn find_token(haystack: &str) -> Option<String> {
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    haystack.match_indices("93_").find_map(|(i, _)| {
        let run = haystack[i + 3..]
            .chars()
            .take_while(|c| token_char(*c))
            .count();
        (run >= 40).then(|| haystack[i..].chars().take(60).collect())
    })
}

/// T32: the real binary at `RUST_LOG=trace`, a full login through the mock and a few more
/// requests; then no secret, code, token, state or session id in its stdout and stderr, in
/// `/metrics`, in the pages it sent, or in `wxgate check`'s output.
#[tokio::test]
async fn t32_secrets_never_reach_logs_metrics_pages_or_check_output() {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_wxgate");
    let up = Upstream::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    let mock_config = MockConfig {
        auto_consent: true,
        ..MockConfig::default()
    };
    let appsecret = mock_config.secret.expose().to_owned();
    tokio::spawn(MockWeChat::new(mock_config.clone()).serve(listener, std::future::pending()));
    let (port, admin_port) = (free_port(), free_port());
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://{host}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wxgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "{host}"
public_url = "{origin}"
[admin]
listen = "127.0.0.1:{admin_port}"
[wechat]
appid = "{appid}"
secret = "{appsecret}"
authorize_url = "http://{mock}/connect/oauth2/authorize"
api_base = "http://{mock}"
[session]
store = "memory"
cookie_secure = false
secret = "{SESSION_SECRET}"
[identity]
algorithm = "HS256"
secret = "{IDENTITY_SECRET}"
[[routes]]
path = "/"
upstream = "http://{up}"
[[routes]]
path = "/vip/"
upstream = "http://{up}"
scope = "snsapi_userinfo"
"#,
            appid = mock_config.appid,
            up = up.addr,
        ),
    )
    .unwrap();
    let stdout = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    // Kill on drop, whatever happens below.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id().to_string();
    let child = Reap(child);
    let mut up_yet = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&host).await.is_ok() {
            up_yet = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up_yet, "the gateway did not start");

    let mut pages = String::new();
    let get = |url: String, cookie: Option<String>| async move {
        let mut request = client().get(url).header("user-agent", WECHAT_UA);
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        request.send().await.unwrap()
    };
    let first = get(format!("{origin}/vip/page?from=singlemessage"), None).await;
    let set: Vec<String> = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let state_cookie = cookie_pair(&set, "wxgate_state").unwrap();
    let authorize = support::wechat::authorize_target(first).await;
    let state = authorize
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let wechat = get(authorize, None).await;
    let callback = wechat.headers()["location"].to_str().unwrap().to_owned();
    let code = callback
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let done = get(callback.clone(), Some(state_cookie.clone())).await;
    assert_eq!(done.status(), 302);
    let set: Vec<String> = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let session = cookie_pair(&set, "wxgate_session").unwrap();
    let page = get(format!("{origin}/vip/page"), Some(session.clone())).await;
    assert_eq!(page.status(), 200);
    let jwt = identity_of(&up.last()).remove(0);
    for (url, cookie) in [
        (format!("{origin}/_wxgate/me"), Some(session.clone())),
        // An error page: the used state again, with another code (a replay; the same
        // callback URL again would be WeChat's double load, which lands with the session).
        (
            format!("{origin}/_wxgate/callback?code=replayed{code}&state={state}"),
            Some(state_cookie.clone()),
        ),
        (
            format!("{origin}/_wxgate/callback?code={code}&state={state}"),
            None,
        ),
        (format!("{origin}/missing%zz"), Some(session.clone())),
        (
            format!("{origin}/_wxgate/logout?rd=/bye"),
            Some(session.clone()),
        ),
    ] {
        let resp = get(url, cookie).await;
        pages.push_str(&format!("{:?}\n", resp.headers()));
        pages.push_str(&resp.text().await.unwrap());
    }
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("wxgate_"), "{metrics:.200}");
    let check = Command::new(BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(check.status.success());
    let check = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(child);
    let logs = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
        std::fs::read_to_string(dir.path().join("stderr")).unwrap()
    );
    // The log is really at trace level and saw the login, so its silence means something.
    assert!(logs.lines().count() > 25, "{logs:.500}");
    assert!(logs.contains("TRACE"), "{logs:.500}");
    assert!(
        logs.contains("/_wxgate/callback"),
        "the access log saw the callback"
    );
    let state_value = state_cookie.split_once('=').unwrap().1;
    let session_value = session.split_once('=').unwrap().1;
    let secrets = [
        ("AppSecret", appsecret.as_str()),
        ("session secret", SESSION_SECRET),
        ("identity HMAC key", IDENTITY_SECRET),
        ("code", code.as_str()),
        ("state", state.as_str()),
        ("state cookie", state_value),
        ("session id", session_value),
        ("identity JWT", jwt.as_str()),
    ];
    for (place, text) in [
        ("logs", &logs),
        ("/metrics", &metrics),
        ("pages", &pages),
        ("wxgate check", &check),
    ] {
        for (what, secret) in secrets {
            assert!(secret.len() >= 20, "{what} is too short to search for");
            if let Some(excerpt) = find_leak(text, secret) {
                panic!("the {what} appears in {place}: …{excerpt}…");
            }
        }
        if let Some(excerpt) = find_token(text) {
            panic!("a WeChat token appears in {place}: {excerpt}…");
        }
    }
}

/// The configuration keys this work added are validated, each problem named by its key.
#[test]
fn security_keys_are_validated_with_their_key_path() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/wxgate.toml"))
            .unwrap();
    let mut base = wxgate::config::parse_toml(&example).unwrap();
    // The example's secrets are placeholders; an operator's environment replaces them.
    base.wechat.secret = wxgate::Secret::new("3f9a2c7e1b4d6a8f0c2e4b6d8f1a3c5e");
    base.session.secret = wxgate::Secret::new(SESSION_SECRET);
    base.identity.secret = wxgate::Secret::new(IDENTITY_SECRET);
    let problems = wxgate::config::validate(&base);
    assert!(problems.is_empty(), "{problems:?}");
    type Tweak = fn(&mut Config);
    let cases: &[(Tweak, &str)] = &[
        (
            |c| c.session.cookie_domain = Some("evil.com".into()),
            "session.cookie_domain",
        ),
        (
            |c| c.session.cookie_domain = Some("localhost".into()),
            "session.cookie_domain",
        ),
        (
            |c| c.session.cookie_name = "__Host-wxgate".into(),
            "session.cookie_name",
        ),
        (
            |c| {
                c.server.websocket_origins =
                    vec![url::Url::parse("https://app.example.com/page").unwrap()]
            },
            "server.websocket_origins[0]",
        ),
        (
            |c| c.server.limits.login_burst = 0,
            "server.limits.login_burst",
        ),
        (
            |c| c.identity.ttl = Duration::from_secs(3600),
            "identity.ttl",
        ),
    ];
    for (tweak, key) in cases {
        let mut config = base.clone();
        tweak(&mut config);
        let problems = wxgate::config::validate(&config);
        assert!(
            problems.iter().any(|p| p.key == *key),
            "{key}: {problems:?}"
        );
    }
    // Accepted: a parent domain of public_url's host, and the limit turned off.
    let mut config = base.clone();
    config.session.cookie_domain = Some(".example.com".into());
    config.server.limits.login_rate = 0;
    config.server.limits.login_burst = 0;
    assert!(wxgate::config::validate(&config).is_empty());
}

#[tokio::test]
async fn t88_an_idle_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(|c, _, _| {
        c.server.limits.idle_timeout = Duration::from_millis(300);
        c.server.limits.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(w.gw.addr).await.unwrap();
    stream
        .write_all(format!("GET /public/x HTTP/1.1\r\nHost: {}\r\n\r\n", w.host).as_bytes())
        .await
        .unwrap();
    // Read the answer, then keep reading: the gateway must close the idle connection itself,
    // long before the header timeout (60 s) or this test's bound (10 s) would.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn t03_a_foreign_host_never_shapes_the_redirect_to_wechat() {
    let w = default_world().await;
    let callback: String =
        url::form_urlencoded::byte_serialize(format!("{}/_wxgate/callback", w.origin).as_bytes())
            .collect();
    for headers in [
        "Host: evil.test\r\n".to_owned(),
        format!(
            "Host: {}\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: https\r\n",
            w.host
        ),
    ] {
        let (head, answer) = raw(
            &w,
            &format!(
                "GET /admin/x HTTP/1.1\r\n{headers}User-Agent: {WECHAT_UA}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let location = to_authorize(&head, &answer).unwrap_or_default();
        assert!(
            location.contains(&format!("redirect_uri={callback}&")),
            "{location}"
        );
        let head_text = answer.split("\r\n\r\n").next().unwrap();
        assert!(!head_text.contains("evil.test"), "{head_text}");
    }
    w.gw.shutdown().await;
}

/// Issue 18: the login's pages were built apart from the gateway's other answers and lacked
/// `X-Content-Type-Options: nosniff`. Every answer the gateway makes itself — whichever part
/// decided it — carries the same security headers.
#[tokio::test]
async fn every_answer_the_gateway_makes_itself_carries_the_same_security_headers() {
    let w = world(|c, _, private| {
        c.routes
            .push(support::route("/qr/", private.addr, Scope::SnsapiBase));
    })
    .await;
    const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0";
    let wechat = format!("User-Agent: {WECHAT_UA}\r\n");
    let desktop = format!("User-Agent: {DESKTOP}\r\n");
    let xhr = format!("{wechat}X-Requested-With: XMLHttpRequest\r\n");
    let state = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let cases = [
        (
            "the hash hop page",
            "GET /admin/x".to_owned(),
            wechat.clone(),
            200,
        ),
        ("a script's 401", "GET /admin/x".into(), xhr.clone(), 401),
        ("the QR page", "GET /qr/x".into(), desktop.clone(), 200),
        (
            "the WeChat-only page",
            "GET /admin/x".into(),
            desktop.clone(),
            403,
        ),
        (
            "an expired login link",
            format!("GET {FORGED_CALLBACK}"),
            wechat.clone(),
            400,
        ),
        (
            "a callback not made with GET",
            format!("POST {FORGED_CALLBACK}"),
            format!("{wechat}Content-Length: 0\r\n"),
            405,
        ),
        (
            "a fragment report without its login",
            format!("GET /_wxgate/fragment?state={state}&hash=x"),
            wechat.clone(),
            400,
        ),
        (
            "me without a session",
            "GET /_wxgate/me".into(),
            xhr.clone(),
            401,
        ),
        (
            "a logout",
            "GET /_wxgate/logout".into(),
            wechat.clone(),
            302,
        ),
        (
            "the public keys",
            "GET /_wxgate/jwks.json".into(),
            xhr.clone(),
            200,
        ),
        (
            "no such endpoint",
            "GET /_wxgate/nothing".into(),
            wechat.clone(),
            404,
        ),
        (
            "a bad path",
            "GET /a/%2e%2e/%2e%2e/x".into(),
            wechat.clone(),
            400,
        ),
    ];
    for (what, request_line, headers, status) in cases {
        let (head, answer) = raw(
            &w,
            &format!(
                "{request_line} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
                w.host
            ),
        )
        .await;
        assert_eq!(head.status, status, "{what}: {answer}");
        assert_eq!(
            head.get("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(head.get("x-frame-options"), Some("DENY"), "{what}");
        assert!(head.get("cache-control").is_some(), "{what}");
    }
    w.gw.shutdown().await;
}
