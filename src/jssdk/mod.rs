//! The JS-SDK for pages behind the gateway: `GET /_wxgate/jssdk?url=` answers the
//! `wx.config` fields for that exact page, `GET /_wxgate/jssdk.js` is a helper that asks for
//! them and calls `wx.config` in one line. Signatures come from one basic token and one
//! jsapi_ticket per account, shared by every gateway over the store (`credentials`).

pub mod credentials;
mod script;
pub mod signature;

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::header::RETRY_AFTER;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::config::Config;
use crate::metrics::{JssdkMetrics, Metrics};
use crate::session::{Clock, SessionStore};
use crate::wechat::{WeChatClient, WeChatError};

pub use credentials::{Cause, CredentialError, Credentials, Fetched};
pub use signature::{PageUrl, SignedOrigins, UrlRefused, sign};

/// The JS-SDK of every account the gateway holds the AppSecret of.
pub struct Jssdk {
    default: Option<Account>,
    apps: Vec<(String, Account)>,
    origins: SignedOrigins,
    metrics: JssdkMetrics,
    clock: Clock,
}

/// One Official Account's signer.
struct Account {
    appid: String,
    credentials: Arc<Credentials>,
}

impl Jssdk {
    /// `None` when no account has a secret to fetch a token with.
    pub fn build(
        config: &Config,
        metrics: &Metrics,
        store: Arc<dyn SessionStore>,
    ) -> Result<Option<Self>, WeChatError> {
        let default = if config.wechat.secret.is_empty() || config.wechat.appid.is_empty() {
            None
        } else {
            Some(Account::new(config, metrics, store.clone())?)
        };
        let mut apps = Vec::new();
        for app in &config.apps {
            if let Some(app_config) = config.for_app(&app.name) {
                apps.push((
                    app.name.clone(),
                    Account::new(&app_config, metrics, store.clone())?,
                ));
            }
        }
        if default.is_none() && apps.is_empty() {
            return Ok(None);
        }
        let hosts = config.routes.iter().filter_map(|r| r.host.clone());
        Ok(Some(Jssdk {
            default,
            apps,
            origins: SignedOrigins::new(config.server.public_url.as_ref(), hosts),
            metrics: metrics.jssdk.clone(),
            clock: Clock::system(),
        }))
    }

    /// Whether the configuration holds an AppSecret to sign with.
    pub fn wanted(config: &Config) -> bool {
        !(config.wechat.secret.is_empty() || config.wechat.appid.is_empty())
            || !config.apps.is_empty()
    }

    /// Whether `path` is one of the JS-SDK's endpoints.
    pub fn serves(path: &str) -> bool {
        matches!(path, "/_wxgate/jssdk" | "/_wxgate/jssdk.js")
    }

    pub async fn endpoint<B>(&self, path: &str, request: &Request<B>) -> Response<Body> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "method_not_allowed", "message": "Use GET."}),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if path == "/_wxgate/jssdk.js" {
            return script::response();
        }
        let query = Query::parse(request.uri().query());
        let result = self.signed(&query).await;
        match result {
            Ok(config) => {
                self.metrics.signed("ok");
                json(StatusCode::OK, &config)
            }
            Err(refusal) => {
                self.metrics.signed(refusal.metric());
                refusal.response()
            }
        }
    }

    async fn signed(&self, query: &Query) -> Result<serde_json::Value, Refusal> {
        let account = match query.app.as_deref() {
            Some(name) => self.apps.iter().find(|(n, _)| n == name).map(|(_, a)| a),
            None => self.default.as_ref().or(self.apps.first().map(|(_, a)| a)),
        }
        .ok_or(Refusal::UnknownApp)?;
        let page = PageUrl::check(query.url.as_deref(), &self.origins).map_err(Refusal::Url)?;
        let ticket = account.credentials.ticket().await.map_err(|error| {
            // WeChat's refusals are logged once where they are fetched; the store's here.
            // Never the token, ticket or page URL.
            match &error {
                CredentialError::WeChat { .. } => {
                    tracing::debug!(appid = %account.appid, error = %error, "JS-SDK signature unavailable");
                }
                _ => tracing::warn!(appid = %account.appid, error = %error, "JS-SDK signature unavailable"),
            }
            Refusal::Credentials(error)
        })?;
        let timestamp = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let nonce = signature::nonce();
        let signature = sign(ticket.expose(), &nonce, timestamp, page.as_str());
        Ok(serde_json::json!({
            "appId": account.appid,
            "timestamp": timestamp,
            "nonceStr": nonce,
            "signature": signature,
        }))
    }
}

impl Account {
    fn new(
        config: &Config,
        metrics: &Metrics,
        store: Arc<dyn SessionStore>,
    ) -> Result<Self, WeChatError> {
        let wechat = WeChatClient::observed(
            config.wechat.client_settings(),
            Some(metrics.wechat.observer()),
        )?;
        let fetches = metrics.jssdk.clone();
        let credentials = Credentials::new(
            wechat,
            store,
            Clock::system(),
            config.wechat.timeout,
            Some(Arc::new(
                move |what: Fetched, result: Result<(), &WeChatError>| {
                    let label = result.map_or_else(WeChatError::metric_label, |()| "ok".to_owned());
                    fetches.fetched(what.label(), label);
                },
            )),
        );
        Ok(Account {
            appid: config.wechat.appid.clone(),
            credentials,
        })
    }
}

/// `url` and `app`, percent-decoded; the first of each.
struct Query {
    url: Option<String>,
    app: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = Query {
            url: None,
            app: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "url" => &mut parsed.url,
                "app" => &mut parsed.app,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        parsed
    }
}

/// Why a page gets no signature; each answer names the cause and, where an operator must
/// act, the setting that fixes it.
#[derive(Debug)]
enum Refusal {
    UnknownApp,
    Url(UrlRefused),
    Credentials(CredentialError),
}

impl Refusal {
    fn metric(&self) -> &'static str {
        match self {
            Refusal::UnknownApp | Refusal::Url(_) => "refused",
            Refusal::Credentials(_) => "failed",
        }
    }

    fn response(&self) -> Response<Body> {
        let (status, error, message, fix) = self.explained();
        let mut body = serde_json::json!({"error": error, "message": message});
        if let Some(fix) = fix {
            body["fix"] = serde_json::Value::from(fix);
        }
        if let Refusal::Credentials(CredentialError::WeChat { cause, what }) = self {
            body["fetching"] = serde_json::Value::from(what.label());
            if let Some(code) = cause.errcode() {
                body["errcode"] = serde_json::Value::from(code);
            }
        }
        let mut response = json(status, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }

    fn explained(&self) -> (StatusCode, &'static str, String, Option<&'static str>) {
        match self {
            Refusal::UnknownApp => (
                StatusCode::NOT_FOUND,
                "unknown_app",
                "No account of this gateway is named by `app`.".into(),
                Some("Name one of the [[apps]] entries, or leave `app` out for [wechat]."),
            ),
            Refusal::Url(UrlRefused::ForeignOrigin) => (
                StatusCode::FORBIDDEN,
                "foreign_origin",
                UrlRefused::ForeignOrigin.to_string(),
                Some("Only pages on server.public_url or a route's host are signed."),
            ),
            Refusal::Url(reason) => (StatusCode::BAD_REQUEST, "bad_url", reason.to_string(), None),
            Refusal::Credentials(CredentialError::Store(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "The shared store holding the jsapi_ticket cannot be reached.".into(),
                Some(
                    "Check the session store (session.store, session.redis_url); /readyz says more.",
                ),
            ),
            Refusal::Credentials(CredentialError::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "wechat_busy",
                "Another gateway is fetching the jsapi_ticket and has not finished.".into(),
                None,
            ),
            Refusal::Credentials(CredentialError::WeChat { what, cause }) => {
                let (status, error, fix) = cause.explained();
                (
                    status,
                    error,
                    format!("WeChat refused the {what}: {cause}."),
                    Some(fix),
                )
            }
        }
    }
}

impl Cause {
    /// The status, error code and fix of a refused fetch.
    fn explained(self) -> (StatusCode, &'static str, &'static str) {
        let misconfigured = StatusCode::BAD_GATEWAY;
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match self {
            Cause::IpNotWhitelisted => (
                misconfigured,
                "ip_not_whitelisted",
                "Add the gateway's egress IP address to the IP whitelist (公众号后台 → 设置与开发 → 基本配置 → IP白名单).",
            ),
            Cause::IpAwaitsConfirmation => (
                misconfigured,
                "ip_awaits_confirmation",
                "An administrator must confirm this call in WeChat, or add the gateway's egress IP to the IP whitelist (设置与开发 → 基本配置 → IP白名单).",
            ),
            Cause::InvalidAppsecret => (
                misconfigured,
                "invalid_appsecret",
                "Set wechat.secret (WXGATE_WECHAT__SECRET) to the current AppSecret (设置与开发 → 基本配置 → AppSecret); it changes when reset there.",
            ),
            Cause::InvalidAppid => (
                misconfigured,
                "invalid_appid",
                "Set wechat.appid to the Official Account's AppID (设置与开发 → 基本配置 → AppID).",
            ),
            Cause::DailyQuota => (
                unavailable,
                "quota_exhausted",
                "The API's daily quota is spent: it resets at midnight Beijing time, or an administrator can clear it (设置与开发 → 接口权限 / clear_quota). Look for other services fetching tokens for this account.",
            ),
            Cause::MinuteQuota => (
                unavailable,
                "quota_exhausted",
                "The API's per-minute quota is spent; it recovers within a minute. Look for other services fetching tokens for this account.",
            ),
            Cause::SystemBusy => (
                unavailable,
                "wechat_unavailable",
                "WeChat is busy; the gateway tries again shortly.",
            ),
            Cause::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "wechat_timeout",
                "WeChat did not answer within wechat.timeout; check the gateway's route to api.weixin.qq.com.",
            ),
            Cause::Unreachable => (
                misconfigured,
                "wechat_unreachable",
                "Check wechat.api_base and the gateway's route to api.weixin.qq.com.",
            ),
            Cause::Errcode(_) => (
                misconfigured,
                "wechat_error",
                "Look the errcode up in WeChat's global return codes (全局返回码).",
            ),
        }
    }

    fn errcode(self) -> Option<i64> {
        match self {
            Cause::IpNotWhitelisted => Some(40164),
            Cause::IpAwaitsConfirmation => Some(89503),
            Cause::InvalidAppsecret => Some(40125),
            Cause::InvalidAppid => Some(40013),
            Cause::DailyQuota => Some(45009),
            Cause::MinuteQuota => Some(45011),
            Cause::SystemBusy => Some(-1),
            Cause::Errcode(code) => Some(code),
            Cause::Timeout | Cause::Unreachable => None,
        }
    }
}

/// JSON the browser must not keep: a signature is for one page view.
fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    crate::pages::json_response(status, value)
}

/// Why `wxgate jssdk refresh --force` did not refresh.
#[derive(Debug, thiserror::Error)]
pub enum ForceRefreshError {
    #[error("the memory store lives inside a running gateway; nothing to refresh from here")]
    MemoryStore,
    #[error("no account with an AppSecret is configured{}", .0.as_ref().map(|a| format!(" under the name \"{a}\"")).unwrap_or_default())]
    NoAccount(Option<String>),
    #[error(transparent)]
    Open(#[from] crate::session::StoreOpenError),
    #[error("wechat: {0}")]
    Client(#[from] WeChatError),
    #[error("{0}")]
    Refresh(#[from] CredentialError),
}

/// `wxgate jssdk refresh --force`: over the configured (shared) store, as the gateways see it.
pub async fn force_refresh(
    config: &Config,
    app: Option<&str>,
) -> Result<String, ForceRefreshError> {
    if config.session.store == crate::config::StoreKind::Memory {
        return Err(ForceRefreshError::MemoryStore);
    }
    let store = crate::session::open_store(&config.session)?;
    let metrics = Metrics::new();
    let jssdk = Jssdk::build(config, &metrics, store)?
        .ok_or_else(|| ForceRefreshError::NoAccount(app.map(str::to_owned)))?;
    let account = match app {
        Some(name) => jssdk.apps.iter().find(|(n, _)| n == name).map(|(_, a)| a),
        None => jssdk.default.as_ref(),
    }
    .ok_or_else(|| ForceRefreshError::NoAccount(app.map(str::to_owned)))?;
    account.credentials.force_refresh().await?;
    Ok(account.appid.clone())
}

/// What an operator must set up in WeChat's back office for the JS-SDK (`wxgate check`).
pub fn operator_notes(config: &Config) -> Vec<String> {
    if !Jssdk::wanted(config) {
        return Vec::new();
    }
    let mut domains: Vec<String> = config
        .server
        .public_url
        .iter()
        .filter_map(|u| u.host_str().map(str::to_owned))
        .chain(config.routes.iter().filter_map(|r| r.host.clone()))
        .collect();
    domains.sort();
    domains.dedup();
    let domains = if domains.is_empty() {
        "(none: set server.public_url or a route host)".to_owned()
    } else {
        domains.join(", ")
    };
    vec![
        "JS-SDK: GET /_wxgate/jssdk?url= signs wx.config for pages on these domains only:".into(),
        format!("  {domains}"),
        "  WeChat back office: 设置与开发 → 公众号设置 → 功能设置 → JS接口安全域名 must list each"
            .into(),
        "  (domain only, no port; WeChat asks for its MP_verify_*.txt file at the domain's root)."
            .into(),
        "  设置与开发 → 基本配置 → IP白名单 must list this gateway's egress IP address(es),".into(),
        "  or WeChat answers errcode 40164 and signature requests fail with ip_not_whitelisted."
            .into(),
        "  The basic access_token comes from /cgi-bin/stable_token in normal mode: it never voids"
            .into(),
        "  the token your own backend got from /cgi-bin/token (the two are isolated), and it is"
            .into(),
        "  shared by every gateway over the session store (one fetch per account per ~2 h).".into(),
        "  `wxgate jssdk refresh --force` forces a new one (voids the old for all; 20 a day)."
            .into(),
    ]
}
