//! `wxgate mock-wechat`: a faithful mock of open.weixin.qq.com (authorize, consent) and
//! api.weixin.qq.com (`/sns/*`) on one listener, with fixture users, fault injection and
//! call counters under `/_mock/`, so the gateway can be tested without WeChat.

mod api;
mod authorize;
mod cgi;
mod control;
mod faults;
mod html;
mod jweixin;
mod store;
mod users;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::Secret;

pub use faults::{
    ContentTypeVariant, DoubleLoad, ErrmsgStyle, Escapes, Faults, Quirks, RefreshMode,
};
pub use users::{FixtureUser, USERS};

use api::ApiEndpoint;
use faults::Stats;
use store::{Clock, Store};
use wire::Body;

pub const DEFAULT_APPID: &str = "wx2ebfe5f20389c64a";
pub const DEFAULT_SECRET: &str = "5b2c8e1f7a9d4c3e0f6a19d27c4b8e03";

/// Command-line flags of `wxgate mock-wechat`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// The Official Account appid the mock knows.
    #[arg(long, default_value = DEFAULT_APPID)]
    pub appid: String,
    /// The AppSecret the mock expects.
    #[arg(long, env = "WXGATE_MOCK_SECRET", hide_env_values = true, default_value = DEFAULT_SECRET)]
    pub secret: Secret,
    /// The account name shown on the consent page.
    #[arg(long, default_value = "wxgate 演示服务号")]
    pub app_name: String,
    /// A 网页授权域名 (exact host, no port); repeatable. Loopback hosts are always accepted.
    #[arg(long = "authorized-domain", value_name = "HOST")]
    pub authorized_domains: Vec<String>,
    /// Refuse loopback redirect_uris with a port too, like real WeChat.
    #[arg(long)]
    pub strict_domains: bool,
    /// Accept any http(s) redirect_uri (demos on a LAN address).
    #[arg(long)]
    pub any_redirect: bool,
    /// The app is not bound to an Open Platform account: no unionid anywhere.
    #[arg(long)]
    pub no_unionid: bool,
    /// Consent to snsapi_userinfo at once instead of showing the consent page.
    #[arg(long)]
    pub auto_consent: bool,
    /// The fixture user of browsers without a `mock_user` cookie.
    #[arg(long, default_value = "lilei")]
    pub default_user: String,
    /// Delay before every JSON API answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Answer the next N JSON API calls with errcode -1.
    #[arg(long, default_value_t = 0)]
    pub fail_next: u32,
    /// Answer the next N JSON API calls with HTTP `--http-error-status`.
    #[arg(long, default_value_t = 0)]
    pub http_error_next: u32,
    #[arg(long, default_value_t = 503)]
    pub http_error_status: u16,
    /// Answer the next N JSON API calls with a non-JSON body.
    #[arg(long, default_value_t = 0)]
    pub garbage_next: u32,
    /// Never answer the next N JSON API calls.
    #[arg(long, default_value_t = 0)]
    pub hang_next: u32,
    /// Every login is a 快照页 virtual account (is_snapshotuser:1).
    #[arg(long)]
    pub snapshot: bool,
    /// The simulated user refuses snsapi_userinfo consent.
    #[arg(long)]
    pub deny: bool,
    /// 拒绝 redirects to redirect_uri?state=STATE instead of staying on the page.
    #[arg(long)]
    pub deny_redirect: bool,
    /// Content-Type of the JSON API.
    #[arg(long, value_enum, default_value_t = ContentTypeVariant::Plain)]
    pub content_type: ContentTypeVariant,
    /// errmsg suffix style.
    #[arg(long, value_enum, default_value_t = ErrmsgStyle::Rid)]
    pub errmsg_style: ErrmsgStyle,
    /// What a refresh does to a still-valid access token.
    #[arg(long, value_enum, default_value_t = RefreshMode::Rotate)]
    pub refresh_mode: RefreshMode,
    /// Let any browser through the authorize page. WeChat (and by default the mock) answers
    /// a User-Agent without `MicroMessenger` with "请在微信客户端打开链接".
    #[arg(long)]
    pub any_browser: bool,
    #[command(flatten)]
    pub quirks: Quirks,
}

/// Everything the mock is configured with; `faults` is also what `/_mock/reset` restores.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub appid: String,
    pub secret: Secret,
    pub app_name: String,
    /// `Some(id)`: the app is bound to this Open Platform account and sees unionids.
    pub open_platform_id: Option<String>,
    pub authorized_domains: Vec<String>,
    /// Accept 127.0.0.1/localhost/[::1] redirect_uris with any port.
    pub loopback_any_port: bool,
    pub accept_any_redirect: bool,
    pub auto_consent: bool,
    pub default_user: String,
    /// `Some(origin)`: profiles point their `headimgurl` at this mock's own `/_mock/avatar`
    /// (`wxgate demo` has no internet to reach qlogo.cn); `None`: qlogo.cn URLs like WeChat's.
    pub avatar_origin: Option<String>,
    pub code_ttl: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub faults: Faults,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            appid: DEFAULT_APPID.into(),
            secret: Secret::new(DEFAULT_SECRET),
            app_name: "wxgate 演示服务号".into(),
            open_platform_id: Some("mock-open-platform".into()),
            authorized_domains: Vec::new(),
            loopback_any_port: true,
            accept_any_redirect: false,
            auto_consent: false,
            default_user: "lilei".into(),
            avatar_origin: None,
            code_ttl: Duration::from_secs(300),
            access_token_ttl: Duration::from_secs(7200),
            refresh_token_ttl: Duration::from_secs(30 * 86_400),
            faults: Faults::default(),
        }
    }
}

impl From<&MockArgs> for MockConfig {
    fn from(args: &MockArgs) -> Self {
        let mut faults = Faults {
            latency_ms: args.latency_ms,
            fail_next: args.fail_next,
            http_error_next: args.http_error_next,
            http_error_status: args.http_error_status,
            garbage_next: args.garbage_next,
            hang_next: args.hang_next,
            snapshot: args.snapshot,
            deny: args.deny,
            deny_redirect: args.deny_redirect,
            content_type: args.content_type,
            errmsg_style: args.errmsg_style,
            refresh_mode: args.refresh_mode,
            require_wechat_ua: !args.any_browser,
            ..Faults::default()
        };
        args.quirks.apply(&mut faults);
        let defaults = MockConfig::default();
        Self {
            appid: args.appid.clone(),
            secret: args.secret.clone(),
            app_name: args.app_name.clone(),
            open_platform_id: if args.no_unionid {
                None
            } else {
                defaults.open_platform_id
            },
            authorized_domains: args.authorized_domains.clone(),
            loopback_any_port: !args.strict_domains,
            accept_any_redirect: args.any_redirect,
            auto_consent: args.auto_consent,
            default_user: args.default_user.clone(),
            faults,
            ..defaults
        }
    }
}

/// State shared by every connection of one mock.
struct Shared {
    config: MockConfig,
    faults: Mutex<Faults>,
    stats: Stats,
    store: Mutex<Store>,
    /// Basic-support tokens, jsapi_tickets and their quotas (`cgi`).
    basic: Mutex<cgi::Basic>,
    clock: Clock,
    users: users::Directory,
    /// The client of `prefetch` (none if it cannot be built: the option then only counts).
    fetcher: Option<reqwest::Client>,
}

/// A poisoned lock only means another request panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Changes what the mock sees of each request before it answers (the demo dresses a desktop
/// browser as WeChat's webview, as it does for the gateway).
pub type Dress = Arc<dyn Fn(&mut http::HeaderMap) + Send + Sync>;

/// The mock WeChat: configuration plus state. Serve it on any listener.
pub struct MockWeChat {
    shared: Arc<Shared>,
    dress: Option<Dress>,
}

impl MockWeChat {
    pub fn new(config: MockConfig) -> Self {
        let shared = Shared {
            faults: Mutex::new(config.faults.clone()),
            config,
            stats: Stats::default(),
            store: Mutex::new(Store::default()),
            basic: Mutex::new(cgi::Basic::default()),
            clock: Clock::default(),
            users: users::Directory::default(),
            fetcher: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .ok(),
        };
        Self {
            shared: Arc::new(shared),
            dress: None,
        }
    }

    /// The same mock, seeing every request through `dress` first.
    pub fn dressed(self, dress: Dress) -> Self {
        Self {
            dress: Some(dress),
            ..self
        }
    }

    /// Serves HTTP/1 and HTTP/2 on `listener` until `shutdown` completes, then drains briefly.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let dress = self.dress;
        crate::server::plain::serve(listener, shutdown, "mock WeChat", move |mut request| {
            let shared = Arc::clone(&shared);
            if let Some(dress) = &dress {
                dress(request.headers_mut());
            }
            async move { route(&shared, request).await }
        })
        .await;
        Ok(())
    }
}

async fn route(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let mut response = dispatch(shared, request).await;
    // WeChat's Date is WeChat's clock: `POST /_mock/clock` moves it (`wxgate doctor` reads it).
    let now = std::time::UNIX_EPOCH + Duration::from_secs(shared.clock.now());
    if let Ok(date) = http::HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
        response.headers_mut().insert(http::header::DATE, date);
    }
    response
}

async fn dispatch(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    // WeChat serves its JSON API for any method, with the parameters in the query.
    match path {
        "/connect/oauth2/authorize" => authorize::authorize(shared, query, &parts.headers).await,
        "/connect/oauth2/authorize_reply" => authorize::reply(shared, query, &parts.headers).await,
        "/sns/oauth2/access_token" => api::serve(shared, ApiEndpoint::AccessToken, query).await,
        "/sns/oauth2/refresh_token" => api::serve(shared, ApiEndpoint::RefreshToken, query).await,
        "/sns/userinfo" => api::serve(shared, ApiEndpoint::UserInfo, query).await,
        "/sns/auth" => api::serve(shared, ApiEndpoint::Auth, query).await,
        "/cgi-bin/token" | "/cgi-bin/stable_token" | "/cgi-bin/ticket/getticket" => {
            let endpoint = match path {
                "/cgi-bin/token" => cgi::CgiEndpoint::Token,
                "/cgi-bin/stable_token" => cgi::CgiEndpoint::StableToken,
                _ => cgi::CgiEndpoint::Ticket,
            };
            let peer = parts.extensions.get::<SocketAddr>().copied();
            let body = read_small_body(body).await;
            cgi::serve(shared, endpoint, &parts.method, query, body, peer).await
        }
        jweixin::SCRIPT_PATH => jweixin::script(),
        jweixin::VERIFY_PATH => jweixin::verify(shared, query, &parts.headers),
        "/" => wire::html(html::index_page(&shared.config.appid)),
        _ if path.starts_with("/_mock/") => {
            control::handle(shared, &parts.method, path, query, body).await
        }
        _ => wire::plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A request body of at most 64 KiB, or `None` (too large, unreadable or absent).
async fn read_small_body(body: Incoming) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let collected = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .ok()?;
    Some(collected.to_bytes()).filter(|b| !b.is_empty())
}

/// `wxgate mock-wechat`: binds, prints where to point the gateway, serves until Ctrl-C.
pub async fn run(args: MockArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let config = MockConfig::from(&args);
    println!(
        "mock WeChat listening on http://{addr} (appid {})",
        config.appid
    );
    println!("  authorize_url = \"http://{addr}/connect/oauth2/authorize\"");
    println!("  api_base      = \"http://{addr}\"");
    println!(
        "  control       : http://{addr}/_mock/faults, /_mock/stats, /_mock/reset, /_mock/users (GET, POST), /_mock/secrets"
    );
    let shutdown = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C; serving until killed");
            std::future::pending::<()>().await;
        }
    };
    MockWeChat::new(config).serve(listener, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    #[test]
    fn flags_become_the_initial_configuration() {
        let cli = Cli::try_parse_from([
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--auto-consent",
            "--no-unionid",
            "--authorized-domain",
            "m.example.com",
            "--fail-next",
            "2",
            "--content-type",
            "json-charset",
            "--errmsg-style",
            "hints",
        ])
        .unwrap();
        let config = MockConfig::from(&cli.mock);
        assert!(config.auto_consent);
        assert_eq!(config.open_platform_id, None);
        assert_eq!(config.authorized_domains, vec!["m.example.com".to_owned()]);
        assert_eq!(config.faults.fail_next, 2);
        assert_eq!(config.faults.content_type, ContentTypeVariant::JsonCharset);
        assert_eq!(config.faults.errmsg_style, ErrmsgStyle::Hints);
        assert_eq!(config.appid, DEFAULT_APPID);
        assert_eq!(config.secret.expose(), DEFAULT_SECRET);
        assert!(!format!("{config:?}").contains(DEFAULT_SECRET));
    }
}
