//! Sessions that last and scale, through real sockets: the embedded redb store across a
//! restart, several gateways sharing a real `redis-server`, a Redis outage and its end,
//! expiry, encryption at rest, and `wxgate sessions` run as the built binary.

use crate::support;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use support::redis_server::{self, RedisCluster, RedisServer, free_port};
use support::upstream::Upstream;
use support::wechat::{Pending, log_in_with, plain_browser_with_jar, until_callback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wxgate::Secret;
use wxgate::config::{Config, Scope, StoreKind};
use wxgate::login::AuthScope;
use wxgate::mock::{MockConfig, MockWeChat};
use wxgate::server::Running;
use wxgate::session::{
    Clock, Lifetimes, NewSession, RecordKeys, RedisStore, Session, SessionId, SessionStore,
    WeChatToken, WeChatTokens,
};

const BIN: &str = env!("CARGO_BIN_EXE_wxgate");
const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";
const SESSION_SECRET: &str = "test-session-secret-0123456789-abcdefghij";
const IDENTITY_SECRET: &str = "test-identity-secret-0123456789-abcdefghij";
const COOKIE: &str = "wxgate_session";

macro_rules! need_redis {
    () => {
        if !redis_server::available() {
            return;
        }
    };
}

/// A Redis Cluster also needs `redis-cli` to join its nodes.
macro_rules! need_redis_cluster {
    () => {
        if !redis_server::cluster_available() {
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------
// The world: mock WeChat behind a tap, an upstream, gateways on chosen stores.

/// The mock WeChat. The gateway reaches its API through a tap that keeps every byte the
/// mock answered, so a test knows the real access_token and refresh_token handed out.
struct WeChat {
    authorize: SocketAddr,
    api: SocketAddr,
    answers: Arc<Mutex<Vec<u8>>>,
    config: MockConfig,
}

impl WeChat {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authorize = listener.local_addr().unwrap();
        let config = MockConfig {
            auto_consent: true,
            ..MockConfig::default()
        };
        tokio::spawn(MockWeChat::new(config.clone()).serve(listener, std::future::pending()));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let api = tap(authorize, answers.clone()).await;
        WeChat {
            authorize,
            api,
            answers,
            config,
        }
    }

    /// Every access_token and refresh_token the mock has handed the gateway.
    fn tokens(&self) -> Vec<String> {
        let answers = String::from_utf8_lossy(&self.answers.lock().unwrap()).into_owned();
        let mut tokens = Vec::new();
        for name in ["\"access_token\"", "\"refresh_token\""] {
            for (at, _) in answers.match_indices(name) {
                let rest = answers[at + name.len()..].trim_start_matches([':', ' ']);
                if let Some(value) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    tokens.push(value.to_owned());
                }
            }
        }
        tokens
    }
}

/// A TCP relay to `target` that copies what `target` sends back into `answers`.
async fn tap(target: SocketAddr, answers: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let requests = tokio::io::copy(&mut client_read, &mut server_write);
                let responses = async {
                    let mut buf = [0u8; 8192];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        answers.lock().unwrap().extend_from_slice(&buf[..n]);
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::join!(requests, responses);
            });
        }
    });
    addr
}

#[derive(Clone, Copy)]
enum Store<'a> {
    Redb(&'a Path),
    Redis(&'a str),
}

/// A gateway on `port` in front of `upstream`: `/` public, `/base/` and `/vip/` behind a
/// WeChat login, sessions in `store`.
fn gateway_config(wechat: &WeChat, upstream: SocketAddr, port: u16, store: Store) -> Config {
    let mut config = support::config_with_routes(&[("/", upstream)]);
    config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.server.public_url = Some(url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    config.wechat.appid = wechat.config.appid.clone();
    config.wechat.secret = wechat.config.secret.clone();
    config.wechat.authorize_url = url::Url::parse(&format!(
        "http://{}/connect/oauth2/authorize",
        wechat.authorize
    ))
    .unwrap();
    config.wechat.api_base = url::Url::parse(&format!("http://{}", wechat.api)).unwrap();
    match store {
        Store::Redb(path) => {
            config.session.store = StoreKind::Redb;
            config.session.path = path.to_owned();
        }
        Store::Redis(url) => {
            config.session.store = StoreKind::Redis;
            config.session.redis_url = Secret::new(url);
        }
    }
    config.session.store_timeout = Duration::from_millis(300);
    config.session.cookie_secure = false;
    config.session.secret = Secret::new(SESSION_SECRET);
    config.identity.algorithm = wxgate::identity::Algorithm::HS256;
    config.identity.secret = Secret::new(IDENTITY_SECRET);
    config.identity.key_file = None;
    config
        .routes
        .push(support::route("/base/", upstream, Scope::SnsapiBase));
    config
        .routes
        .push(support::route("/vip/", upstream, Scope::SnsapiUserinfo));
    config
}

fn origin(config: &Config) -> String {
    format!("http://{}", config.server.listen)
}

/// Logs in through the mock as a WeChat browser; returns the session cookie's value.
async fn login(origin: &str, path: &str) -> String {
    let login = log_in_with(plain_browser_with_jar(WECHAT_UA), origin, path).await;
    assert_eq!(
        login.landing.status(),
        200,
        "login through {path} failed: {:?}",
        login.hops
    );
    login.cookie(COOKIE).expect("a session cookie was set")
}

/// A WeChat browser request carrying only the session cookie.
async fn visit(origin: &str, path: &str, cookie: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(WECHAT_UA)
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{origin}{path}"))
        .header("cookie", format!("{COOKIE}={cookie}"))
        .send()
        .await
        .unwrap()
}

/// `/_wxgate/me`'s status for this cookie: 200 with a live session, 401 without.
async fn me(origin: &str, cookie: &str) -> u16 {
    visit(origin, "/_wxgate/me", cookie).await.status().as_u16()
}

async fn me_json(origin: &str, cookie: &str) -> serde_json::Value {
    visit(origin, "/_wxgate/me", cookie)
        .await
        .json()
        .await
        .unwrap()
}

/// A gateway on the Redis at `url` with a visitor logged in on `/base/` (its session cookie
/// value), ready; the mock WeChat and the upstream are returned to keep them alive.
async fn logged_in_on(url: &str) -> (WeChat, Upstream, Running, String, String) {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redis(url));
    let origin = origin(&config);
    let gw = support::start(&config).await;
    let cookie = login(&origin, "/base/page").await;
    assert_eq!(visit(&origin, "/base/page", &cookie).await.status(), 200);
    assert_eq!(readyz(&gw).await, 200);
    (wechat, up, gw, origin, cookie)
}

/// After an outage the store is back, empty (no persistence): the gateway is ready again
/// within `patience`, and the visitor is sent to log in again, never refused.
async fn recovers_empty(gw: &Running, origin: &str, cookie: &str, patience: Duration) {
    eventually("/readyz recovers", patience, || async {
        readyz(gw).await == 200
    })
    .await;
    let after = visit(origin, "/base/page", cookie).await;
    assert!(
        support::wechat::authorize_target(after)
            .await
            .contains("/connect/oauth2/authorize?"),
        "sent to log in again, not refused"
    );
    let cookie = login(origin, "/base/page").await;
    assert_eq!(visit(origin, "/base/page", &cookie).await.status(), 200);
}

async fn readyz(gw: &Running) -> u16 {
    support::client()
        .get(format!("http://{}/readyz", gw.admin_addr))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `check` until it holds; fails the test if it does not within `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

// ---------------------------------------------------------------------------------------
// The built binary with a configuration file.

/// Writes `config` as TOML. Secrets serialize redacted, so they travel as `WXGATE_*`
/// variables, as production deployments pass them.
fn write_config(dir: &Path, config: &Config) -> std::path::PathBuf {
    let file = dir.join("wxgate.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    file
}

fn wxgate(config_file: &Path, config: &Config, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .arg("--config")
        .arg(config_file)
        .env_remove("RUST_LOG")
        .env("WXGATE_WECHAT__SECRET", config.wechat.secret.expose())
        .env("WXGATE_SESSION__SECRET", SESSION_SECRET)
        .env("WXGATE_IDENTITY__SECRET", IDENTITY_SECRET)
        .env(
            "WXGATE_SESSION__REDIS_URL",
            config.session.redis_url.expose(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    // A command that hangs is a failure, not a stuck test run.
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("wxgate {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// redb

#[tokio::test]
async fn redb_sessions_survive_a_restart_of_the_gateway() {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/sessions.redb");
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redb(&path));
    let origin = origin(&config);

    let gw = support::start(&config).await;
    let cookie = login(&origin, "/vip/index.html").await;
    let before = me_json(&origin, &cookie).await;
    assert_eq!(before["scope"], "snsapi_userinfo");
    gw.shutdown().await;

    let gw = support::start(&config).await;
    assert_eq!(
        me_json(&origin, &cookie).await,
        before,
        "same session after the restart"
    );
    let page = visit(&origin, "/vip/after-restart", &cookie).await;
    assert_eq!(page.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/vip/after-restart");
    assert!(seen.headers.contains_key("x-wechat-identity"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_redb_file_stops_the_gateway_with_an_error_naming_it() {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let garbage = b"not a redb file: somebody copied notes over it\n".repeat(64);
    std::fs::write(&path, &garbage).unwrap();
    let mut config = gateway_config(&wechat, up.addr, free_port(), Store::Redb(&path));
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let file = write_config(dir.path(), &config);

    let (code, _, err) = wxgate(&file, &config, &["run"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("session.path"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = wxgate(&file, &config, &["sessions", "count"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    let (code, _, err) = wxgate(&file, &config, &["check"]);
    assert_eq!(code, 2, "check reports it too: {err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "never silently reset"
    );

    // A sound file passes check, also while a gateway holds it.
    std::fs::remove_file(&path).unwrap();
    let gw = support::start(&config).await;
    let (code, _, err) = wxgate(&file, &config, &["check"]);
    assert_eq!(code, 0, "{err}");
    gw.shutdown().await;
    let (code, _, err) = wxgate(&file, &config, &["check"]);
    assert_eq!(code, 0, "{err}");
}

// ---------------------------------------------------------------------------------------
// Redis: several gateways, outages

#[tokio::test]
async fn gateways_sharing_one_redis_share_a_login_and_a_logout() {
    need_redis!();
    let redis = RedisServer::start().await;
    share_a_login_and_a_logout(&redis.url()).await;
}

#[tokio::test]
async fn gateways_sharing_one_redis_cluster_share_a_login_and_a_logout() {
    need_redis_cluster!();
    let cluster = RedisCluster::start().await;
    share_a_login_and_a_logout(&cluster.url()).await;
}

async fn share_a_login_and_a_logout(url: &str) {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let config_a = gateway_config(&wechat, up.addr, free_port(), Store::Redis(url));
    let config_b = gateway_config(&wechat, up.addr, free_port(), Store::Redis(url));
    let (a, b) = (origin(&config_a), origin(&config_b));
    let gw_a = support::start(&config_a).await;
    let gw_b = support::start(&config_b).await;

    let cookie = login(&a, "/base/page").await;
    assert_eq!(me(&b, &cookie).await, 200, "a login on A is valid on B");
    assert_eq!(visit(&b, "/base/page", &cookie).await.status(), 200);
    // A consent login (profile, refresh_token) too, started on B.
    let vip = login(&b, "/vip/page").await;
    assert_eq!(me(&a, &vip).await, 200, "a login on B is valid on A");
    assert_eq!(visit(&a, "/vip/page", &vip).await.status(), 200);

    let out = visit(&a, "/_wxgate/logout", &cookie).await;
    assert_eq!(out.status(), 302);
    assert_eq!(
        me(&a, &cookie).await,
        401,
        "refused at once where it logged out"
    );
    eventually(
        "B refuses the session logged out on A",
        Duration::from_secs(3),
        || async { me(&b, &cookie).await == 401 },
    )
    .await;
    gw_a.shutdown().await;
    gw_b.shutdown().await;
}

/// A WeChat browser that keeps no cookies: the test carries them by hand.
fn bare_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(WECHAT_UA)
        .no_proxy()
        .build()
        .unwrap()
}

/// `callback` (a URL at the public origin) loaded at `origin` with `cookie`.
async fn load_at(origin: &str, callback: &str, cookie: &str) -> reqwest::Response {
    let url = reqwest::Url::parse(callback).unwrap();
    let target = format!("{origin}{}?{}", url.path(), url.query().unwrap_or(""));
    bare_browser()
        .get(target)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

fn session_set(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{COOKIE}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .filter(|v| !v.is_empty())
}

async fn wechat_stat(wechat: &WeChat, name: &str) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("http://{}/_mock/stats", wechat.authorize))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats[name].as_u64().unwrap()
}

async fn wechat_faults(wechat: &WeChat, faults: serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/_mock/faults", wechat.authorize))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

/// Two gateways on one Redis that answer for one public address, as behind a balancer.
async fn two_gateways(
    wechat: &WeChat,
    upstream: SocketAddr,
    redis: &str,
) -> ((Running, String), (Running, String)) {
    let config_a = gateway_config(wechat, upstream, free_port(), Store::Redis(redis));
    let mut config_b = gateway_config(wechat, upstream, free_port(), Store::Redis(redis));
    config_b.server.public_url = config_a.server.public_url.clone();
    let (a, b) = (origin(&config_a), origin(&config_b));
    (
        (support::start(&config_a).await, a),
        (support::start(&config_b).await, b),
    )
}

#[tokio::test]
async fn a_double_load_split_across_two_gateways_lands_both_times_with_one_exchange() {
    need_redis!();
    let redis = RedisServer::start().await;
    a_split_double_load_lands_both_times_with_one_exchange(&redis.url()).await;
}

#[tokio::test]
async fn on_a_redis_cluster_a_double_load_split_across_two_gateways_lands_with_one_exchange() {
    need_redis_cluster!();
    let cluster = RedisCluster::start().await;
    a_split_double_load_lands_both_times_with_one_exchange(&cluster.url()).await;
}

async fn a_split_double_load_lands_both_times_with_one_exchange(url: &str) {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let ((gw_a, a), (gw_b, b)) = two_gateways(&wechat, up.addr, url).await;
    // WeChat is slow: the second load reaches B while A is still exchanging the code.
    wechat_faults(&wechat, serde_json::json!({"latency_ms": 300})).await;
    let Pending {
        callback,
        state_cookie: state,
        ..
    } = until_callback(&bare_browser(), &a, "/base/page?x=1").await;
    let (first, second) = tokio::join!(load_at(&a, &callback, &state), async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        load_at(&b, &callback, &state).await
    });
    for (name, load) in [("A", &first), ("B", &second)] {
        assert_eq!(load.status(), 302, "the load on {name} lands");
        assert_eq!(load.headers()["location"], "/base/page?x=1", "{name}");
    }
    let session = session_set(&first).expect("A sets the session");
    assert_eq!(
        session_set(&second).as_deref(),
        Some(session.as_str()),
        "one session"
    );
    assert_eq!(
        wechat_stat(&wechat, "codes_exchanged").await,
        1,
        "one exchange"
    );
    // A third load, sequential, on B with the same cookie: the same answer.
    let third = load_at(&b, &callback, &state).await;
    assert_eq!(third.status(), 302);
    assert_eq!(session_set(&third).as_deref(), Some(session.as_str()));
    assert_eq!(me(&a, &session).await, 200);
    assert_eq!(me(&b, &session).await, 200);
    assert_eq!(wechat_stat(&wechat, "codes_exchanged").await, 1);
    gw_a.shutdown().await;
    gw_b.shutdown().await;
}

#[tokio::test]
async fn a_state_used_on_one_gateway_is_refused_by_the_other() {
    need_redis!();
    let redis = RedisServer::start().await;
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let ((gw_a, a), (gw_b, b)) = two_gateways(&wechat, up.addr, &redis.url()).await;
    let Pending {
        authorize,
        callback,
        state_cookie: state,
    } = until_callback(&bare_browser(), &a, "/base/page").await;
    let landed = load_at(&a, &callback, &state).await;
    assert_eq!(landed.status(), 302);
    assert_eq!(wechat_stat(&wechat, "codes_exchanged").await, 1);
    // The copy of the state cookie taken before the login, with a fresh code for the same
    // state, replayed on the other gateway: refused before WeChat is asked.
    let again = bare_browser().get(&authorize).send().await.unwrap();
    let fresh = again.headers()["location"].to_str().unwrap().to_owned();
    assert_ne!(fresh, callback);
    let replay = load_at(&b, &fresh, &state).await;
    assert_eq!(replay.status(), 400);
    assert!(session_set(&replay).is_none());
    assert_eq!(wechat_stat(&wechat, "codes_exchanged").await, 1);
    // And nothing of the login is readable in Redis: no state, no session id.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let session = session_set(&landed).unwrap();
    let code_state = reqwest::Url::parse(&callback).unwrap();
    let state_value = code_state
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    for key in &keys {
        let value: Vec<u8> = match redis::cmd("GET").arg(key).query_async(&mut conn).await {
            Ok(v) => v,
            Err(_) => continue,
        };
        assert!(!key.contains(&state_value), "{key}");
        assert!(!contains(&value, &session), "the session id in {key}");
        assert!(!contains(&value, &state_value), "the state in {key}");
    }
    gw_a.shutdown().await;
    gw_b.shutdown().await;
}

#[tokio::test]
async fn a_redis_outage_fails_protected_routes_closed_and_service_resumes_by_itself() {
    need_redis!();
    let mut redis = RedisServer::start().await;
    let (_wechat, _up, gw, origin, cookie) = logged_in_on(&redis.url()).await;

    redis.kill();
    eventually(
        "protected route fails closed",
        Duration::from_secs(5),
        || async { visit(&origin, "/base/page", &cookie).await.status() == 503 },
    )
    .await;
    let xhr = reqwest::Client::new()
        .get(format!("{origin}/base/api"))
        .header("cookie", format!("{COOKIE}={cookie}"))
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 503);
    let body: serde_json::Value = xhr.json().await.unwrap();
    assert_eq!(body["status"], 503, "{body}");
    let public = visit(&origin, "/public/page", &cookie).await;
    assert_eq!(public.status(), 200, "public routes keep serving");
    eventually("/readyz fails", Duration::from_secs(5), || async {
        readyz(&gw).await == 503
    })
    .await;

    redis.restart().await;
    recovers_empty(&gw, &origin, &cookie, Duration::from_secs(15)).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_redis_cluster_outage_fails_protected_routes_closed_and_service_resumes_by_itself() {
    need_redis_cluster!();
    let mut cluster = RedisCluster::start().await;
    let (_wechat, _up, gw, origin, cookie) = logged_in_on(&cluster.url()).await;

    cluster.kill();
    // Every answer comes within the client's patience: 503, never a hang.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(WECHAT_UA)
        .no_proxy()
        .build()
        .unwrap();
    eventually(
        "protected route fails closed",
        Duration::from_secs(5),
        || async {
            patient
                .get(format!("{origin}/base/page"))
                .header("cookie", format!("{COOKIE}={cookie}"))
                .send()
                .await
                .expect("an answer, not a hang")
                .status()
                == 503
        },
    )
    .await;
    assert_eq!(
        visit(&origin, "/public/page", &cookie).await.status(),
        200,
        "public routes keep serving"
    );
    eventually("/readyz fails", Duration::from_secs(5), || async {
        readyz(&gw).await == 503
    })
    .await;

    cluster.restart().await;
    recovers_empty(&gw, &origin, &cookie, Duration::from_secs(20)).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_gateway_on_an_unreachable_redis_cluster_starts_not_ready_and_answers_503() {
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redis(&url));
    let origin = origin(&config);
    let gw = support::start(&config).await;
    assert_eq!(readyz(&gw).await, 503);
    let started = Instant::now();
    let cookie = SessionId::generate().cookie_value();
    let refused = visit(&origin, "/base/page", &cookie).await;
    assert_eq!(refused.status(), 503, "fails closed");
    assert!(started.elapsed() < Duration::from_secs(3), "no hang");
    assert_eq!(visit(&origin, "/public/page", "").await.status(), 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Expiry, encryption at rest (both persistent stores)

async fn expiry_is_honoured(store: Store<'_>) {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let mut config = gateway_config(&wechat, up.addr, free_port(), store);
    let ttl = Duration::from_secs(2);
    config.session.ttl = ttl;
    config.session.max_lifetime = Duration::from_secs(4);
    let origin = origin(&config);
    let gw = support::start(&config).await;

    // Idle: gone after the ttl.
    let idle = login(&origin, "/base/x").await;
    assert_eq!(me(&origin, &idle).await, 200);
    eventually(
        "an idle session expires",
        Duration::from_secs(8),
        || async { me(&origin, &idle).await == 401 },
    )
    .await;

    // Busy: kept alive past the ttl by its requests, ended by the absolute lifetime.
    let busy = login(&origin, "/base/x").await;
    let logged_in = Instant::now();
    while me(&origin, &busy).await == 200 {
        assert!(
            logged_in.elapsed() < Duration::from_secs(10),
            "a busy session outlived its absolute lifetime"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        logged_in.elapsed() > ttl,
        "a busy session died at its idle ttl: requests did not slide it"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn redb_sessions_expire_when_idle_and_at_their_absolute_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    expiry_is_honoured(Store::Redb(&dir.path().join("s.redb"))).await;
}

#[tokio::test]
async fn redis_sessions_expire_when_idle_and_at_their_absolute_lifetime() {
    need_redis!();
    let redis = RedisServer::start().await;
    expiry_is_honoured(Store::Redis(&redis.url())).await;
}

#[tokio::test]
async fn tokens_and_cookies_are_unreadable_in_a_raw_copy_of_the_redb_file() {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redb(&path));
    let origin = origin(&config);
    let gw = support::start(&config).await;
    let cookie = login(&origin, "/vip/x").await;
    gw.shutdown().await;

    let tokens = wechat.tokens();
    assert!(tokens.len() >= 2, "the tap saw the tokens: {tokens:?}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 1000, "the session was written");
    for secret in tokens.iter().map(String::as_str).chain([cookie.as_str()]) {
        assert!(
            !contains(&bytes, secret),
            "{secret} is readable in the file"
        );
    }
}

#[tokio::test]
async fn tokens_and_cookies_are_unreadable_in_a_raw_dump_of_redis() {
    need_redis!();
    let redis = RedisServer::start().await;
    let url = redis.url();
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redis(&url));
    let origin = origin(&config);
    let gw = support::start(&config).await;
    let cookie = login(&origin, "/vip/x").await;

    let mut conn = redis.connection().await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let mut dump = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ],
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            other => panic!("unexpected {other} key"),
        };
        let serialized: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        dump.extend(key);
        values.into_iter().for_each(|v| dump.extend(v));
        dump.extend(serialized);
    }
    let tokens = wechat.tokens();
    assert!(tokens.len() >= 2, "the tap saw the tokens: {tokens:?}");
    for secret in tokens.iter().map(String::as_str).chain([cookie.as_str()]) {
        assert!(!contains(&dump, secret), "{secret} is readable in Redis");
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// wxgate sessions

#[tokio::test]
async fn wxgate_sessions_counts_inspects_revokes_and_purges_a_redb_file() {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let mut config = gateway_config(&wechat, up.addr, free_port(), Store::Redb(&path));
    let origin = origin(&config);
    let file = write_config(dir.path(), &config);

    let gw = support::start(&config).await;
    let phone = login(&origin, "/vip/x").await;
    let laptop = login(&origin, "/vip/x").await;
    let profile = me_json(&origin, &phone).await;
    let openid = profile["openid"].as_str().unwrap().to_owned();
    let nickname = profile["nickname"].as_str().unwrap().to_owned();
    let (code, _, err) = wxgate(&file, &config, &["sessions", "count"]);
    assert_eq!(code, 1, "the running gateway holds the file");
    assert!(err.contains("in use by another process"), "{err}");
    gw.shutdown().await;

    let (code, out, err) = wxgate(&file, &config, &["sessions", "count"]);
    assert_eq!((code, out.as_str()), (0, "2 live sessions\n"), "{err}");
    let (code, out, err) = wxgate(
        &file,
        &config,
        &["sessions", "inspect", "--openid", &openid],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("2 live sessions of openid {openid}\n")),
        "{out}"
    );
    assert!(
        out.contains(&nickname) && out.contains("snsapi_userinfo"),
        "{out}"
    );
    for secret in wechat.tokens().iter().chain([&phone, &laptop]) {
        assert!(
            !out.contains(secret.as_str()),
            "inspect printed a secret: {out}"
        );
    }
    let (code, out, _) = wxgate(&file, &config, &["sessions", "revoke", "--openid", &openid]);
    assert_eq!(
        (code, out),
        (0, format!("revoked 2 sessions of openid {openid}\n"))
    );
    let (_, out, _) = wxgate(&file, &config, &["sessions", "count"]);
    assert_eq!(out, "0 live sessions\n");

    // Purging: sessions of a one-second ttl, expired but still in the file.
    config.session.ttl = Duration::from_secs(1);
    let file = write_config(dir.path(), &config);
    let gw = support::start(&config).await;
    assert_eq!(me(&origin, &phone).await, 401, "revoked stays revoked");
    let short = login(&origin, "/base/x").await;
    gw.shutdown().await;
    assert!(!short.is_empty());
    eventually(
        "the short session expires",
        Duration::from_secs(10),
        || async { wxgate(&file, &config, &["sessions", "count"]).1 == "0 live sessions\n" },
    )
    .await;
    let (code, out, _) = wxgate(&file, &config, &["sessions", "purge-expired"]);
    assert_eq!((code, out.as_str()), (0, "purged 1 expired session\n"));
    let (_, out, _) = wxgate(&file, &config, &["sessions", "purge-expired"]);
    assert_eq!(out, "purged 0 expired sessions\n");
}

#[tokio::test]
async fn wxgate_sessions_revokes_a_user_on_redis_while_gateways_serve() {
    need_redis!();
    let redis = RedisServer::start().await;
    revokes_a_user_while_gateways_serve(&redis.url()).await;
}

#[tokio::test]
async fn wxgate_check_and_sessions_work_on_a_redis_cluster_while_gateways_serve() {
    need_redis_cluster!();
    let cluster = RedisCluster::start().await;
    revokes_a_user_while_gateways_serve(&cluster.url()).await;
}

async fn revokes_a_user_while_gateways_serve(url: &str) {
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redis(url));
    let origin = origin(&config);
    let file = write_config(dir.path(), &config);
    let (code, out, err) = wxgate(&file, &config, &["check"]);
    assert_eq!(code, 0, "wxgate check refuses {url}: {out}{err}");
    let gw = support::start(&config).await;
    let phone = login(&origin, "/vip/x").await;
    let laptop = login(&origin, "/vip/x").await;
    let profile = me_json(&origin, &phone).await;
    let openid = profile["openid"].as_str().unwrap().to_owned();

    let (code, out, err) = wxgate(&file, &config, &["sessions", "count"]);
    assert_eq!((code, out.as_str()), (0, "2 live sessions\n"), "{err}");
    let (code, out, err) = wxgate(
        &file,
        &config,
        &["sessions", "inspect", "--openid", &openid],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("2 live sessions of openid {openid}\n")),
        "{out}"
    );
    assert!(out.contains(profile["nickname"].as_str().unwrap()), "{out}");
    for secret in wechat.tokens().iter().chain([&phone, &laptop]) {
        assert!(
            !out.contains(secret.as_str()),
            "inspect printed a secret: {out}"
        );
    }
    let (code, out, _) = wxgate(&file, &config, &["sessions", "revoke", "--openid", &openid]);
    assert_eq!(
        (code, out),
        (0, format!("revoked 2 sessions of openid {openid}\n"))
    );
    eventually(
        "the gateway refuses revoked sessions",
        Duration::from_secs(3),
        || async { me(&origin, &phone).await == 401 && me(&origin, &laptop).await == 401 },
    )
    .await;
    let (code, out, _) = wxgate(&file, &config, &["sessions", "purge-expired"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("purged 0 expired sessions\n"), "{out}");
    gw.shutdown().await;
}

#[tokio::test]
async fn rediss_urls_speak_verified_tls() {
    need_redis!();
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    let file = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca_file = file("ca.pem", ca.pem());
    let tls_port = free_port();
    let _redis = RedisServer::start_with(vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        file("server.pem", server_cert.pem()),
        "--tls-key-file".into(),
        file("server.key", server_key.serialize_pem()),
        "--tls-ca-cert-file".into(),
        ca_file.clone(),
        "--tls-auth-clients".into(),
        "no".into(),
    ])
    .await;

    let wechat = WeChat::start().await;
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let config = gateway_config(&wechat, free_port_addr(), free_port(), Store::Redis(&url));
    let config_file = write_config(dir.path(), &config);
    // rustls-native-certs reads SSL_CERT_FILE: the test CA is trusted by this process only.
    let count = |trust: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["sessions", "count", "--config"])
            .arg(&config_file)
            .env_remove("SSL_CERT_DIR")
            .env("WXGATE_WECHAT__SECRET", config.wechat.secret.expose())
            .env("WXGATE_SESSION__SECRET", SESSION_SECRET)
            .env("WXGATE_IDENTITY__SECRET", IDENTITY_SECRET)
            .env("WXGATE_SESSION__REDIS_URL", &url);
        match trust {
            Some(ca) => command.env("SSL_CERT_FILE", ca),
            None => command.env_remove("SSL_CERT_FILE"),
        };
        let out = command.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = count(Some(&ca_file));
    assert_eq!((code, out.as_str()), (0, "0 live sessions\n"), "{err}");
    let (code, _, err) = count(None);
    assert_eq!(code, 1, "an untrusted certificate is refused: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn rediss_cluster_urls_speak_verified_tls_to_every_node() {
    need_redis_cluster!();
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // OpenSSL (redis-server and redis-cli, client and server on the TLS cluster bus) wants
    // the CA's usages spelled out.
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wxgate test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let node_key = rcgen::KeyPair::generate().unwrap();
    let node_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&node_key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    let file = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let tls = support::redis_server::ClusterTls {
        ca: file("ca.pem", ca.pem()),
        cert: file("node.pem", node_cert.pem()),
        key: file("node.key", node_key.serialize_pem()),
    };
    let cluster = RedisCluster::start_tls(tls.clone()).await;
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");

    let wechat = WeChat::start().await;
    let config = gateway_config(&wechat, free_port_addr(), free_port(), Store::Redis(&url));
    let config_file = write_config(dir.path(), &config);
    // rustls-native-certs reads SSL_CERT_FILE: the test CA is trusted by this process only.
    let run = |args: &[&str], trust: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .arg("--config")
            .arg(&config_file)
            .env_remove("SSL_CERT_DIR")
            .env("WXGATE_WECHAT__SECRET", config.wechat.secret.expose())
            .env("WXGATE_SESSION__SECRET", SESSION_SECRET)
            .env("WXGATE_IDENTITY__SECRET", IDENTITY_SECRET)
            .env("WXGATE_SESSION__REDIS_URL", &url);
        match trust {
            Some(ca) => command.env("SSL_CERT_FILE", ca),
            None => command.env_remove("SSL_CERT_FILE"),
        };
        let out = command.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // `count` asks a node for the slot map, then walks each master: every node over TLS.
    let (code, out, err) = run(&["sessions", "count"], Some(&tls.ca));
    assert_eq!((code, out.as_str()), (0, "0 live sessions\n"), "{err}");
    let (code, out, err) = run(&["sessions", "revoke", "--openid", "o1"], Some(&tls.ca));
    assert_eq!(
        (code, out.as_str()),
        (0, "revoked 0 sessions of openid o1\n"),
        "{err}"
    );
    let (code, _, err) = run(&["sessions", "count"], None);
    assert_eq!(code, 1, "an untrusted certificate is refused: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn free_port_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

// ---------------------------------------------------------------------------------------
// The Redis store's own contract, against a real server

fn whole_seconds_now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn new_session(openid: &str, now: SystemTime, lifetimes: Lifetimes) -> Session {
    let login = NewSession {
        appid: "wx2ebfe5f20389c64a".to_owned(),
        openid: openid.to_owned(),
        unionid: None,
        scope: AuthScope::Base,
        snapshot: false,
        profile: None,
        tokens: WeChatTokens {
            access_token: WeChatToken::new("ACCESS"),
            access_expires_at: now + Duration::from_secs(7200),
            refresh_token: WeChatToken::new("REFRESH"),
            refresh_expires_at: now + Duration::from_secs(86_400),
        },
    };
    Session::new(login, now, lifetimes)
}

fn redis_store(url: &str) -> RedisStore {
    let keys = RecordKeys::derive(SESSION_SECRET.as_bytes()).unwrap();
    RedisStore::open(url, keys, Duration::from_secs(2), Clock::system()).unwrap()
}

#[tokio::test]
async fn the_redis_store_keeps_the_store_contract() {
    need_redis!();
    let mut redis = RedisServer::start().await;
    let store = redis_store(&redis.url());
    keeps_the_store_contract(&store, redis.connection().await).await;

    // Down: an error within the timeout, never an answer.
    store.ping().await.unwrap();
    redis.kill();
    let key = SessionId::generate().storage_key();
    let error = store.get(&key).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(store.ping().await.is_err());
}

/// What every Redis store keeps, checked on the keys it writes through `raw` (a plain or a
/// cluster connection). Leaves no session behind.
async fn keeps_the_store_contract<C>(store: &RedisStore, mut raw: C)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let now = whole_seconds_now();
    let life = Lifetimes::new(Duration::from_secs(600), Duration::from_secs(3600));
    let appid = "wx2ebfe5f20389c64a";

    let key = SessionId::generate().storage_key();
    let session = new_session("me", now, life);
    store.put(&key, &session).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), Some(session.clone()));
    assert_eq!(store.count().await.unwrap(), 1);

    // A touch slides the record's expiry in Redis, and the user's index with it.
    let touched = session.touched(now + Duration::from_secs(60), life);
    assert!(
        store
            .touch(&key, touched.last_seen, touched.expires_at)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&key).await.unwrap(), Some(touched.clone()));
    let record_expiry: i64 = redis::cmd("PEXPIRETIME")
        .arg(format!("wxgate:s:{key}"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let expected = touched
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(record_expiry, expected);
    let index: Vec<String> = redis::cmd("KEYS")
        .arg("wxgate:u:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    let index_expiry: i64 = redis::cmd("PEXPIRETIME")
        .arg(&index[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        index_expiry >= record_expiry,
        "the index outlives its sessions"
    );

    // Leases: one holder at a time.
    assert!(
        store
            .claim_refresh(&key, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_refresh(&key, Duration::from_secs(30))
            .await
            .unwrap()
    );

    // delete_user: that user's sessions only.
    let second = SessionId::generate().storage_key();
    store
        .put(&second, &new_session("me", now, life))
        .await
        .unwrap();
    let other = SessionId::generate().storage_key();
    store
        .put(&other, &new_session("other", now, life))
        .await
        .unwrap();
    assert_eq!(store.user_sessions(appid, "me").await.unwrap().len(), 2);
    assert_eq!(store.delete_user(appid, "me").await.unwrap(), 2);
    assert!(store.user_sessions(appid, "me").await.unwrap().is_empty());
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(store.get(&other).await.unwrap().is_some());
    assert_eq!(store.count().await.unwrap(), 1);

    // Logout: gone, and a late touch does not bring it back.
    assert!(store.delete(&other).await.unwrap());
    assert!(!store.delete(&other).await.unwrap());
    assert!(
        !store
            .touch(&other, now, now + Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert_eq!(store.get(&other).await.unwrap(), None);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("wxgate:s:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Redis expires records itself at their expiry.
    let short = SessionId::generate().storage_key();
    let brief = Lifetimes::new(Duration::from_millis(300), Duration::from_secs(3600));
    store
        .put(&short, &new_session("brief", SystemTime::now(), brief))
        .await
        .unwrap();
    let record = format!("wxgate:s:{short}");
    eventually("Redis expires the record", Duration::from_secs(5), || {
        let mut raw = raw.clone();
        let record = record.clone();
        async move {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(record)
                .query_async(&mut raw)
                .await
                .unwrap();
            exists == 0
        }
    })
    .await;

    assert_eq!(store.count().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// Redis Cluster: three masters; every key a session, a login or a lease writes must be
// accepted by the node owning its slot, and multi-key work must stay within one slot.

#[tokio::test]
async fn the_redis_store_keeps_the_store_contract_on_a_redis_cluster() {
    need_redis_cluster!();
    let mut cluster = RedisCluster::start().await;
    let store = redis_store(&cluster.url());
    keeps_the_store_contract(&store, cluster.connection().await).await;

    // Many sessions: spread over every master, all counted, all revocable at once.
    let now = whole_seconds_now();
    let life = Lifetimes::new(Duration::from_secs(600), Duration::from_secs(3600));
    let mut keys = Vec::new();
    for i in 0..30 {
        let key = SessionId::generate().storage_key();
        let openid = if i % 3 == 0 { "many" } else { "others" };
        store
            .put(&key, &new_session(openid, now, life))
            .await
            .unwrap();
        let touched = new_session(openid, now, life).touched(now + Duration::from_secs(60), life);
        assert!(
            store
                .touch(&key, touched.last_seen, touched.expires_at)
                .await
                .unwrap()
        );
        assert!(
            store
                .claim_refresh(&key, Duration::from_secs(30))
                .await
                .unwrap()
        );
        keys.push(key);
    }
    assert_eq!(store.count().await.unwrap(), 30, "SCAN walks every master");
    for port in cluster.ports() {
        let held: Vec<String> = redis::cmd("KEYS")
            .arg("wxgate:s:*")
            .query_async(&mut cluster.node(port).await)
            .await
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut cluster.node(port).await)
            .await
            .unwrap();
        assert!(
            !held.is_empty(),
            "no session on the master at {port}: {nodes}"
        );
    }

    // A session's record and lease hash to one slot; every lease carries its record's
    // name as its hash tag.
    let mut raw = cluster.connection().await;
    let slots = raw.clone();
    let slot = |key: String| {
        let mut raw = slots.clone();
        async move {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            slot
        }
    };
    for key in &keys {
        let (record, lease) = (
            format!("wxgate:s:{key}"),
            format!("wxgate:l:{{wxgate:s:{key}}}"),
        );
        let exist: i64 = redis::cmd("EXISTS")
            .arg(&record)
            .query_async(&mut raw)
            .await
            .unwrap();
        let leased: i64 = redis::cmd("EXISTS")
            .arg(&lease)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!((exist, leased), (1, 1), "{record}, {lease}");
        assert_eq!(slot(lease).await, slot(record).await);
    }
    let everything: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    for lease in everything.iter().filter(|k| k.starts_with("wxgate:l:")) {
        assert!(
            lease.starts_with("wxgate:l:{wxgate:s:") && lease.ends_with('}'),
            "{lease} carries no hash tag"
        );
    }

    // The user's sessions live on several masters; revoking them reaches every one.
    let appid = "wx2ebfe5f20389c64a";
    assert_eq!(store.user_sessions(appid, "many").await.unwrap().len(), 10);
    assert_eq!(store.delete_user(appid, "many").await.unwrap(), 10);
    assert!(store.user_sessions(appid, "many").await.unwrap().is_empty());
    assert_eq!(store.count().await.unwrap(), 20);
    for key in &keys {
        assert!(store.delete(key).await.is_ok());
    }
    assert_eq!(store.count().await.unwrap(), 0);

    // Shared values and named leases (login single flights, used states, JS-SDK tickets).
    let values = store.shared_values().unwrap();
    for i in 0..20 {
        let name = format!("f:flight-{i}");
        assert_eq!(
            values
                .set_if_absent(&name, b"mine", Duration::from_secs(30))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            values
                .set_if_absent(&name, b"theirs", Duration::from_secs(30))
                .await
                .unwrap()
                .as_deref(),
            Some(b"mine".as_slice())
        );
        values
            .set(&name, b"done", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            values.get(&name).await.unwrap().as_deref(),
            Some(b"done".as_slice())
        );
        let sealed = format!("jssdk:ticket-{i}");
        store
            .put_value(
                &sealed,
                b"ticket",
                SystemTime::now() + Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_value(&sealed).await.unwrap().as_deref(),
            Some(b"ticket".as_slice())
        );
        let lease = format!("jssdk:refresh-{i}");
        assert!(
            store
                .claim_lease(&lease, Duration::from_secs(5))
                .await
                .unwrap()
        );
        assert!(
            !store
                .claim_lease(&lease, Duration::from_secs(5))
                .await
                .unwrap()
        );
    }

    // Down: an error within the timeout, never an answer.
    store.ping().await.unwrap();
    cluster.kill();
    let started = Instant::now();
    let error = store.get(&keys[0]).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(store.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded by the timeout"
    );
}

// ---------------------------------------------------------------------------------------
// A real balancer: haproxy round-robin in front of three gateways sharing one Redis

#[tokio::test]
async fn three_gateways_behind_haproxy_behave_as_one() {
    need_redis!();
    let Some(haproxy) = support::haproxy::binary() else {
        return;
    };
    let redis = RedisServer::start().await;
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let servers: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let balancer = support::haproxy::Haproxy::round_robin(&haproxy, &servers).await;
    let front = format!("http://{}", balancer.addr);
    let mut gateways = Vec::new();
    for port in ports {
        let mut config = gateway_config(&wechat, up.addr, port, Store::Redis(&redis.url()));
        config.server.public_url = Some(url::Url::parse(&front).unwrap());
        config.session.profile_refresh = Duration::from_secs(1);
        gateways.push(support::start(&config).await);
    }

    // Logins: every hop of each may reach another gateway.
    let mut sessions = Vec::new();
    for i in 0..12 {
        sessions.push(login(&front, &format!("/base/page-{i}")).await);
    }
    assert_eq!(wechat_stat(&wechat, "codes_exchanged").await, 12);
    for session in &sessions {
        for _ in 0..3 {
            assert_eq!(me(&front, session).await, 200, "every gateway knows it");
        }
    }

    // WeChat's double load, both loads through the balancer (so on two gateways), while
    // WeChat is slow to answer the first.
    wechat_faults(&wechat, serde_json::json!({"latency_ms": 300})).await;
    let Pending {
        callback,
        state_cookie: state,
        ..
    } = until_callback(&bare_browser(), &front, "/base/double").await;
    let (first, second) = tokio::join!(load_at(&front, &callback, &state), async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        load_at(&front, &callback, &state).await
    });
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (302, 302)
    );
    assert_eq!(session_set(&first), session_set(&second));
    assert_eq!(wechat_stat(&wechat, "codes_exchanged").await, 13);
    wechat_faults(&wechat, serde_json::json!({"latency_ms": 0})).await;

    // Logout through one gateway, honoured by all within the cache's bound.
    let out = visit(&front, "/_wxgate/logout", &sessions[0]).await;
    assert_eq!(out.status(), 302);
    tokio::time::sleep(wxgate::session::MAX_SHARED_STALENESS).await;
    for _ in 0..6 {
        assert_eq!(me(&front, &sessions[0]).await, 401, "logged out everywhere");
    }
    assert_eq!(me(&front, &sessions[1]).await, 200, "the others stay");

    // The refresh lease: a stale profile is refreshed once, whichever gateways see it.
    let vip = login(&front, "/vip/index.html").await;
    let refreshes = wechat_stat(&wechat, "/sns/userinfo").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let paths: Vec<String> = (0..9).map(|i| format!("/vip/p{i}")).collect();
    let burst = paths.iter().map(|path| visit(&front, path, &vip));
    for page in futures_util::future::join_all(burst).await {
        assert_eq!(page.status(), 200, "served while refreshing");
    }
    eventually("one refresh", Duration::from_secs(5), || async {
        wechat_stat(&wechat, "/sns/userinfo").await == refreshes + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        wechat_stat(&wechat, "/sns/userinfo").await,
        refreshes + 1,
        "one refresh across three gateways"
    );
    for gw in gateways {
        gw.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Redis Sentinel: a primary, a replica and three sentinels; the primary dies

/// A sentinel (`redis-server --sentinel`) on a free port watching primary set `wx`.
struct Sentinel {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        // Tuned down from the defaults (30 s to notice, 3 min to fail over) to keep the
        // test's wall time modest.
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor wx 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds wx 1000\n\
                 sentinel failover-timeout wx 4000\n\
                 sentinel parallel-syncs wx 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    async fn ask(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        let mut conn = match client.get_multiplexed_async_connection().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("sentinel {}: {e}", self.port);
                return redis::Value::Nil;
            }
        };
        let mut cmd = redis::cmd("SENTINEL");
        for arg in args {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.unwrap_or_else(|e| {
            eprintln!("sentinel {}: {e}", self.port);
            redis::Value::Nil
        })
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn entries(value: &redis::Value) -> usize {
    match value {
        redis::Value::Array(items) => items.len(),
        _ => 0,
    }
}

#[tokio::test]
async fn through_sentinel_the_gateway_follows_a_failover_without_a_restart() {
    need_redis!();
    let mut primary = RedisServer::start().await;
    let replica = RedisServer::start_with(vec![
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.port.to_string(),
    ])
    .await;
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
    // Ready when every sentinel knows the replica and the two other sentinels.
    for sentinel in &sentinels {
        eventually(
            "sentinels see each other",
            Duration::from_secs(20),
            || async {
                entries(&sentinel.ask(&["replicas", "wx"]).await) == 1
                    && entries(&sentinel.ask(&["sentinels", "wx"]).await) == 2
            },
        )
        .await;
    }
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/wx", hosts.join(","));
    let wechat = WeChat::start().await;
    let up = Upstream::start().await;
    let config = gateway_config(&wechat, up.addr, free_port(), Store::Redis(&url));
    let origin = origin(&config);
    let gw = support::start(&config).await;
    let cookie = login(&origin, "/base/page").await;
    assert_eq!(visit(&origin, "/base/page", &cookie).await.status(), 200);
    // Replicated before the primary dies.
    let conn = primary.connection().await;
    eventually(
        "the login reaches the replica",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            async move {
                let acked: i64 = redis::cmd("WAIT")
                    .arg(1)
                    .arg(100)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(0);
                acked == 1
            }
        },
    )
    .await;

    primary.kill();
    // During the switch: 503 at once, never a hang (the client would give up at 10 s).
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();
    let mut saw_503 = false;
    let mut back = false;
    for _ in 0..300 {
        let status = patient
            .get(format!("{origin}/base/page"))
            .header("cookie", format!("{COOKIE}={cookie}"))
            .header("user-agent", WECHAT_UA)
            .send()
            .await
            .expect("an answer, not a hang")
            .status()
            .as_u16();
        match status {
            503 => saw_503 = true,
            200 if saw_503 => {
                back = true;
                break;
            }
            200 => {}
            other => panic!("during the failover: {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_503,
        "the dead primary is noticed: protected routes fail closed"
    );
    assert!(
        back,
        "the promoted replica serves the session logged in before"
    );
    let promoted = sentinels[0].ask(&["get-master-addr-by-name", "wx"]).await;
    assert_eq!(
        promoted,
        redis::Value::Array(vec![
            redis::Value::BulkString(b"127.0.0.1".to_vec()),
            redis::Value::BulkString(replica.port.to_string().into_bytes()),
        ])
    );
    assert_eq!(me(&origin, &cookie).await, 200);
    // New logins land on the new primary.
    let after = login(&origin, "/base/after").await;
    assert_eq!(me(&origin, &after).await, 200);
    gw.shutdown().await;
}
