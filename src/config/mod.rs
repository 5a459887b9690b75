//! The configuration contract of `design.md`: one typed tree, loaded from a TOML file and
//! `WXGATE_` environment variables, validated with every problem named by its key.
//! Nothing here touches the network; `load` and `validate` are what `wxgate check` runs.

mod credentials;
mod load;
mod store_path;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Secret;
pub use load::{ConfigError, Problem, load, load_identity, parse_toml};
pub use validate::validate;

pub use crate::access::AccessConfig;
pub use crate::identity::Algorithm;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The main listener the browsers talk to.
    pub server: ServerConfig,
    /// The admin listener: health, readiness and metrics.
    pub admin: AdminConfig,
    /// The WeChat Official Account (the default app).
    pub wechat: WeChatConfig,
    /// Where sessions live and how their cookie looks.
    pub session: SessionConfig,
    /// The signed identity sent upstream.
    pub identity: IdentityConfig,
    /// Defaults for every upstream connection; routes may override the timeout.
    pub upstream: UpstreamConfig,
    /// Log output.
    pub log: LogConfig,
    /// The route table; the most specific match wins, not the first in the file.
    pub routes: Vec<RouteConfig>,
    /// More Official Accounts besides `[wechat]`, for routes that name them with `app`.
    pub apps: Vec<AppConfig>,
}

/// Another Official Account served by the same gateway. Its routes say `app = "<name>"`;
/// its visitors get a session of their own (cookie `<session.cookie_name>_<name>`), its
/// WeChat callback is `/_wxgate/callback/<name>`. Unset keys take `[wechat]`'s values.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// How routes and endpoints (`?app=`) name it: lower-case letters, digits and `-`.
    pub name: String,
    /// Its AppID.
    pub appid: String,
    /// Its AppSecret; better `WXGATE_APPS__<index>__SECRET`.
    #[serde(default)]
    pub secret: Secret,
    /// WeChat's authorize page, if not `[wechat]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<url::Url>,
    /// WeChat's JSON API, if not `[wechat]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<url::Url>,
    /// Profile language, if not `[wechat]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Time limit of its WeChat calls, if not `[wechat]`'s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Who may enter this app's routes, if not `[wechat]`'s list; a route's own `access`
    /// replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessConfig>,
}

impl Config {
    /// The configuration app `name` logs in with: this one with `[wechat]` replaced by the
    /// app's settings (unset ones inherited). `None` for an unknown name.
    pub fn for_app(&self, name: &str) -> Option<Config> {
        let app = self.apps.iter().find(|a| a.name == name)?;
        let mut config = self.clone();
        let w = &mut config.wechat;
        w.appid = app.appid.clone();
        w.secret = app.secret.clone();
        if let Some(url) = &app.authorize_url {
            w.authorize_url = url.clone();
        }
        if let Some(url) = &app.api_base {
            w.api_base = url.clone();
        }
        if let Some(lang) = &app.lang {
            w.lang = lang.clone();
        }
        if let Some(timeout) = app.timeout {
            w.timeout = timeout;
        }
        if let Some(access) = &app.access {
            w.access = Some(access.clone());
        }
        Some(config)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// The origin the browser sees (`https://m.example.com`); builds the redirect_uri
    /// given to WeChat. Never derived from the Host header.
    pub public_url: Option<url::Url>,
    /// Present: the listener speaks HTTPS (ALPN h2 and http/1.1).
    pub tls: Option<TlsConfig>,
    /// Peers whose `X-Forwarded-*` headers are believed; everyone else's are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Origins (`https://app.example.com`) besides `public_url`'s whose pages may open a
    /// WebSocket to a protected route; any other `Origin` gets 403 (cross-site WebSocket
    /// hijacking rides on the visitor's cookie).
    pub websocket_origins: Vec<url::Url>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Threads serving client connections, each with its own event loop and upstream
    /// connections; `0`: one per CPU core.
    pub workers: usize,
    /// Request size and time limits.
    pub limits: LimitsConfig,
    /// The gateway's own HTTP/1.1 for requests without a body: the server lane that reads
    /// them and the upstream client that forwards them (docs/http1.md). `false`: hyper serves
    /// and forwards everything. The lane follows a restart, the upstream client a reload.
    pub http1_fast_paths: bool,
}

impl ServerConfig {
    /// The worker threads `workers` asks for: one per CPU core when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: None,
            tls: None,
            trusted_proxies: Vec::new(),
            websocket_origins: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            workers: 0,
            limits: LimitsConfig::default(),
            http1_fast_paths: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Limits against oversized and slow requests; the defaults follow nginx and Envoy's edge advice.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Total bytes of all request header lines (names and values); over it: 431.
    pub max_header_bytes: usize,
    /// Number of request header fields; over it: 431.
    pub max_headers: usize,
    /// Bytes of the request target (path and query); over it: 414.
    pub max_uri_bytes: usize,
    /// Bytes of a request body; over it: 413.
    pub max_body_bytes: u64,
    /// Time a client may take to send a request head (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a connection may stay without any traffic before it is closed. An idle HTTP/1.1
    /// keep-alive connection is parked (holds only its socket) after a second or two of it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open client connections at once; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Refused login callbacks (no or forged state, a replayed state, a code WeChat
    /// refuses) one client may cause per minute, sustained; past it every callback from the
    /// client gets 429 with `Retry-After`. Healthy logins never count, so hundreds of
    /// visitors behind one carrier-NAT address all log in. 0 turns the limit off. A client
    /// is the peer address, or the forwarded client address when the peer is one of
    /// `server.trusted_proxies`.
    pub login_rate: u32,
    /// Refused callbacks one client may cause at once before `login_rate` applies.
    pub login_burst: u32,
    /// Calls to WeChat's API (code exchanges) per minute for one appid, across all clients,
    /// with bursts of ten seconds' worth: keeps the account within WeChat's quota (50 000 a
    /// minute for `sns/oauth2/access_token`). Past it a callback gets 503 with
    /// `Retry-After`, before its code is spent, so reloading it works. 0 turns it off.
    pub wechat_rate: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            login_rate: 120,
            login_burst: 60,
            wechat_rate: 50_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`; keep it off the internet.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeChatConfig {
    /// The Official Account's AppID.
    pub appid: String,
    /// The AppSecret; better given as `WXGATE_WECHAT__SECRET`.
    pub secret: Secret,
    /// WeChat's authorize page.
    pub authorize_url: url::Url,
    /// Base URL of WeChat's JSON API.
    pub api_base: url::Url,
    /// Language of the profile fields (`zh_CN`, `zh_TW`, `en`).
    pub lang: String,
    /// Time limit of every WeChat API call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Which of WeChat's relatives are sent to the authorize page like WeChat itself.
    pub browsers: BrowsersConfig,
    /// Who may enter: present, only the listed visitors get through this app's protected
    /// routes and forward-auth; a route's own `access` replaces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessConfig>,
}

impl WeChatConfig {
    /// What the WeChat client of this account needs: where, as which app, how long.
    pub fn client_settings(&self) -> crate::wechat::ClientSettings {
        crate::wechat::ClientSettings {
            api_base: self.api_base.clone(),
            appid: self.appid.clone(),
            secret: self.secret.clone(),
            timeout: self.timeout,
            lang: self.lang.clone(),
        }
    }
}

/// The in-app browsers besides WeChat's own that count as WeChat (see `login::visitor`).
/// One that does not count gets the route's `non_wechat` behaviour.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrowsersConfig {
    /// WeCom / 企业微信 (`wxwork`). It opens WeChat's authorize page, but may refuse an
    /// Official Account appid; turn off for WeCom audiences that cannot log in there.
    pub wecom: bool,
    /// Mini-program `<web-view>` pages (`miniProgram`).
    pub mini_program: bool,
    /// WeChat for Windows and macOS (`WindowsWechat`, `MacWechat`).
    pub desktop: bool,
}

impl Default for BrowsersConfig {
    fn default() -> Self {
        Self {
            wecom: true,
            mini_program: true,
            desktop: true,
        }
    }
}

impl Default for WeChatConfig {
    fn default() -> Self {
        Self {
            appid: String::new(),
            secret: Secret::default(),
            authorize_url: fixed_url("https://open.weixin.qq.com/connect/oauth2/authorize"),
            api_base: fixed_url("https://api.weixin.qq.com"),
            lang: "zh_CN".to_owned(),
            timeout: Duration::from_secs(5),
            browsers: BrowsersConfig::default(),
            access: None,
        }
    }
}

/// Parses a URL written in this file; a typo here fails every test at once.
fn fixed_url(s: &str) -> url::Url {
    match url::Url::parse(s) {
        Ok(url) => url,
        Err(e) => unreachable!("built-in URL {s} is invalid: {e}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redb,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// `memory`, `redb` (embedded file, the default) or `redis`.
    pub store: StoreKind,
    /// The redb file.
    pub path: PathBuf,
    /// The Redis shared by several gateways: `redis://` or `rediss://` (one server),
    /// `redis+sentinel://` (a primary found through Sentinel) or `redis+cluster://` /
    /// `rediss+cluster://` (Redis Cluster, some of its nodes).
    pub redis_url: Secret,
    /// Name of the session cookie.
    pub cookie_name: String,
    /// Mark cookies `Secure` (HTTPS only). Without `cookie_domain` the session and state
    /// cookies then carry the `__Host-` prefix (`__Host-wxgate_session`), which browsers
    /// only accept from this exact host, so no sibling subdomain can plant or overwrite them.
    pub cookie_secure: bool,
    /// Share the session cookie with this domain and its subdomains (`example.com`); absent:
    /// the cookie belongs to the exact host only. With `cookie_secure` the prefix is then
    /// `__Secure-`, since `__Host-` forbids a Domain.
    pub cookie_domain: Option<String>,
    /// Sliding lifetime of an idle session.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Absolute lifetime: no session outlives its login by more than this, however busy
    /// (WeChat's refresh_token lives 30 days, so a longer session could not be refreshed).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Time limit of one session-store operation (a Redis command, a redb transaction);
    /// past it the request fails closed with 503.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// Keys the state cookie and the encryption of session records at rest; at least 32 bytes.
    pub secret: Secret,
    /// Re-fetch the WeChat profile (through the refresh_token) when older than this.
    #[serde(with = "humantime_serde")]
    pub profile_refresh: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Redb,
            path: PathBuf::from("data/sessions.redb"),
            redis_url: Secret::new("redis://127.0.0.1:6379/0"),
            cookie_name: "wxgate_session".to_owned(),
            cookie_secure: true,
            cookie_domain: None,
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_lifetime: Duration::from_secs(30 * 24 * 3600),
            store_timeout: Duration::from_millis(500),
            secret: Secret::default(),
            profile_refresh: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Request header carrying the signed JWT upstream.
    pub header: String,
    /// `HS256`, `RS256`, `ES256` or `EdDSA`.
    pub algorithm: Algorithm,
    /// PEM private key for the asymmetric algorithms (`wxgate keygen` writes one).
    pub key_file: Option<PathBuf>,
    /// Shared secret for HS256; at least 32 bytes.
    pub secret: Secret,
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// Lifetime of one token; the gateway re-signs before it runs out.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Also send `X-WeChat-OpenID`, `-UnionID`, `-Nickname`, `-Scope` in plain text.
    pub plain_headers: bool,
    /// Keys retired by a rotation, still published in the JWKS so upstreams keep accepting
    /// the tokens they signed until those expire.
    pub previous_keys: Vec<PreviousKey>,
}

/// A retired identity key: verification only, never used to sign.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub secret: Secret,
}

impl IdentityConfig {
    /// The signing key and the retired ones, as the identity module loads them.
    pub fn key_sources(&self) -> (crate::identity::KeySource, Vec<crate::identity::KeySource>) {
        let source =
            |algorithm, key_file: &Option<PathBuf>, secret: &Secret| crate::identity::KeySource {
                algorithm,
                key_file: key_file.clone(),
                secret: (!secret.is_empty()).then(|| secret.expose().to_owned()),
            };
        let current = source(self.algorithm, &self.key_file, &self.secret);
        let previous = self
            .previous_keys
            .iter()
            .map(|k| source(k.algorithm, &k.key_file, &k.secret))
            .collect();
        (current, previous)
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            header: "X-WeChat-Identity".to_owned(),
            algorithm: Algorithm::ES256,
            key_file: Some(PathBuf::from("config/identity.pem")),
            secret: Secret::default(),
            issuer: "wxgate".to_owned(),
            audience: "wxgate-upstream".to_owned(),
            ttl: Duration::from_secs(300),
            plain_headers: false,
            previous_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Time to open a TCP (and TLS) connection to an upstream; past it: 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time an upstream may take to answer with a response head; past it: 504.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an unused pooled upstream connection may be reused.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per upstream and worker thread, for requests without a
    /// body and for those with one each.
    pub pool_max_idle: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`; the level comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
    /// One line per request (target `wxgate::access`).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

/// The access policy of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Forwarded without login.
    Public,
    /// Login with `snsapi_base`: openid (and unionid where WeChat gives it), no consent page.
    SnsapiBase,
    /// Login with `snsapi_userinfo`: the profile too, after the consent page.
    SnsapiUserinfo,
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "public" => Ok(Scope::Public),
            "snsapi_base" => Ok(Scope::SnsapiBase),
            "snsapi_userinfo" => Ok(Scope::SnsapiUserinfo),
            other => Err(serde::de::Error::custom(format!(
                "unknown scope \"{other}\", expected public | snsapi_base | snsapi_userinfo"
            ))),
        }
    }
}

/// What a protected route does with a browser that is not WeChat's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NonWeChat {
    /// A page with a QR code of the URL, asking to open it in WeChat.
    Qrcode,
    /// A 403 page.
    Deny,
    /// Forwarded without identity.
    Anonymous,
}

impl<'de> Deserialize<'de> for NonWeChat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "qrcode" => Ok(NonWeChat::Qrcode),
            "deny" => Ok(NonWeChat::Deny),
            "anonymous" => Ok(NonWeChat::Anonymous),
            other => Err(serde::de::Error::custom(format!(
                "unknown non_wechat \"{other}\", expected qrcode | deny | anonymous"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Only requests for this host (case-insensitive, port ignored); absent: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix, matched segment by segment (`/activity` matches `/activity/x`, not `/activityx`).
    pub path: String,
    /// `http://` or `https://` origin the requests go to, path and query unchanged.
    pub upstream: url::Url,
    /// `public`, `snsapi_base` or `snsapi_userinfo`.
    #[serde(default = "default_scope")]
    pub scope: Scope,
    /// `qrcode`, `deny` or `anonymous`.
    #[serde(default = "default_non_wechat")]
    pub non_wechat: NonWeChat,
    /// Let 快照页 (snapshot page) virtual accounts in.
    #[serde(default = "default_true")]
    pub allow_snapshot: bool,
    /// Overrides `upstream.timeout` for this route.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// The `[[apps]]` entry whose Official Account logs this route's visitors in; absent:
    /// `[wechat]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Who may enter: present, only the listed visitors (openids, unionids, inline or in
    /// files) get through; absent: the app's `access`, else every WeChat visitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessConfig>,
}

fn default_scope() -> Scope {
    Scope::Public
}

fn default_non_wechat() -> NonWeChat {
    NonWeChat::Qrcode
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Whether the gateway runs the WeChat login: for its own protected routes, or, with
    /// `wechat.appid` set, for a proxy in front that asks `/_wxgate/auth` (forward-auth).
    pub fn needs_login(&self) -> bool {
        self.default_app_needed() || !self.apps.is_empty()
    }

    /// Whether `[wechat]` itself logs visitors in: a protected route without `app`, or its
    /// appid set for forward-auth.
    pub fn default_app_needed(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.scope != Scope::Public && r.app.is_none())
            || !self.wechat.appid.is_empty()
    }
}
