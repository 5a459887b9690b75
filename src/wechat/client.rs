//! `WeChatClient`: the four server-side calls of web authorization, each bounded by one
//! timeout and retried at most once (jittered) when the failure is transient.
//! The token URL carries the AppSecret, so no URL is ever formatted, logged or kept in an error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use super::error::{Endpoint, Errcode, Malformed, WeChatError};
use super::model::{AppToken, JsapiTicket, TokenGrant, UserInfo};
use super::parse::{self, Reply};
use crate::Secret;

const USER_AGENT: &str = concat!("wxgate/", env!("CARGO_PKG_VERSION"));
/// WeChat's answers are a few hundred bytes; anything much larger is not WeChat.
const MAX_BODY_BYTES: usize = 64 * 1024;
const BACKOFF_MIN_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 150;

/// How to reach WeChat and as which app.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `https://api.weixin.qq.com` in production, the mock in tests.
    pub api_base: Url,
    pub appid: String,
    pub secret: Secret,
    /// Bound on each client call, retry included.
    pub timeout: Duration,
    /// `lang` of `/sns/userinfo`: zh_CN, zh_TW or en.
    pub lang: String,
}

/// Told of every attempt at a call, for metrics: the endpoint, its outcome and how long it
/// took. It never sees a URL (the token request's holds the AppSecret), a token or a body.
pub type CallObserver = Arc<dyn Fn(Endpoint, Result<(), &WeChatError>, Duration) + Send + Sync>;

/// The WeChat web-authorization API client. Cheap to clone; build it once.
#[derive(Clone)]
pub struct WeChatClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api_base: Url,
    appid: String,
    secret: Secret,
    timeout: Duration,
    lang: String,
    observer: Option<CallObserver>,
}

impl fmt::Debug for WeChatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeChatClient")
            .field("api_base", &self.inner.api_base.as_str())
            .field("appid", &self.inner.appid)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl WeChatClient {
    pub fn new(settings: ClientSettings) -> Result<Self, WeChatError> {
        WeChatClient::observed(settings, None)
    }

    /// The same, telling `observer` of every attempt.
    pub fn observed(
        settings: ClientSettings,
        observer: Option<CallObserver>,
    ) -> Result<Self, WeChatError> {
        validate(&settings)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            // Half the budget for connecting leaves room for one retry after a connect timeout.
            .connect_timeout(settings.timeout / 2)
            .timeout(settings.timeout)
            .build()
            .map_err(|error| WeChatError::Build(error.without_url()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                api_base: settings.api_base,
                appid: settings.appid,
                secret: settings.secret,
                timeout: settings.timeout,
                lang: settings.lang,
                observer,
            }),
        })
    }

    /// `/sns/oauth2/access_token`: trades a one-time code for a token grant.
    pub async fn exchange_code(&self, code: &str) -> Result<TokenGrant, WeChatError> {
        let endpoint = Endpoint::AccessToken;
        let inner = &self.inner;
        let query = [
            ("appid", inner.appid.as_str()),
            ("secret", inner.secret.expose()),
            ("code", code),
            ("grant_type", "authorization_code"),
        ];
        let map = self.call(endpoint, &query).await?;
        parse::token_grant(&map).map_err(|problem| malformed(endpoint, problem))
    }

    /// `/sns/oauth2/refresh_token`: a fresh access_token from a refresh_token (no secret).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenGrant, WeChatError> {
        let endpoint = Endpoint::RefreshToken;
        let query = [
            ("appid", self.inner.appid.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let map = self.call(endpoint, &query).await?;
        parse::token_grant(&map).map_err(|problem| malformed(endpoint, problem))
    }

    /// `/sns/userinfo`: the profile behind a snsapi_userinfo access_token.
    pub async fn userinfo(
        &self,
        access_token: &str,
        openid: &str,
    ) -> Result<UserInfo, WeChatError> {
        let endpoint = Endpoint::UserInfo;
        let query = [
            ("access_token", access_token),
            ("openid", openid),
            ("lang", self.inner.lang.as_str()),
        ];
        let map = self.call(endpoint, &query).await?;
        parse::user_info(&map).map_err(|problem| malformed(endpoint, problem))
    }

    /// `/sns/auth`: Ok when WeChat says the access_token is valid for this openid.
    pub async fn check(&self, access_token: &str, openid: &str) -> Result<(), WeChatError> {
        let endpoint = Endpoint::Auth;
        let query = [("access_token", access_token), ("openid", openid)];
        let map = self.call(endpoint, &query).await?;
        parse::check_ok(&map).map_err(|problem| malformed(endpoint, problem))
    }

    /// `/cgi-bin/stable_token` (POST JSON): the account's basic-support access_token. In
    /// normal mode WeChat hands every caller the same token until it expires, so the
    /// customer's own backend keeps working; `force_refresh` voids it at once (for everyone)
    /// and is limited per day, so it is only ever an operator's explicit choice, never retried.
    pub async fn stable_token(&self, force_refresh: bool) -> Result<AppToken, WeChatError> {
        let endpoint = Endpoint::StableToken;
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": self.inner.appid,
            "secret": self.inner.secret.expose(),
            "force_refresh": force_refresh,
        });
        let map = self
            .call_with(endpoint, Call::PostJson(&body), !force_refresh)
            .await?;
        parse::app_token(&map).map_err(|problem| malformed(endpoint, problem))
    }

    /// `/cgi-bin/ticket/getticket?type=jsapi`: the JS-SDK ticket of a basic access_token.
    pub async fn jsapi_ticket(&self, access_token: &str) -> Result<JsapiTicket, WeChatError> {
        let endpoint = Endpoint::JsapiTicket;
        let query = [("access_token", access_token), ("type", "jsapi")];
        let map = self.call(endpoint, &query).await?;
        parse::jsapi_ticket(&map).map_err(|problem| malformed(endpoint, problem))
    }

    /// The account's appid.
    pub fn appid(&self) -> &str {
        &self.inner.appid
    }

    /// One GET with at most one retry, all within `timeout`.
    async fn call(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<Map<String, Value>, WeChatError> {
        self.call_with(endpoint, Call::Get(query), true).await
    }

    /// One call, retried once when `retry` allows and the failure is transient.
    async fn call_with(
        &self,
        endpoint: Endpoint,
        call: Call<'_>,
        retry: bool,
    ) -> Result<Map<String, Value>, WeChatError> {
        let deadline = Instant::now() + self.inner.timeout;
        let first = match self.attempt(endpoint, call, deadline).await {
            Ok(map) => return Ok(map),
            Err(error) => error,
        };
        let backoff = jittered_backoff();
        if !retry || !first.is_retryable() || Instant::now() + backoff >= deadline {
            return Err(report(endpoint, first));
        }
        tracing::debug!(endpoint = endpoint.path(), error = %first, "retrying WeChat call");
        tokio::time::sleep(backoff).await;
        match self.attempt(endpoint, call, deadline).await {
            Ok(map) => Ok(map),
            // The first try may have reached WeChat and spent the code: "code been used" on
            // the retry would blame the browser for WeChat's failure.
            Err(second) if second.errcode() == Some(Errcode::CodeUsed) => {
                Err(report(endpoint, first))
            }
            Err(second) => Err(report(endpoint, second)),
        }
    }

    async fn attempt(
        &self,
        endpoint: Endpoint,
        call: Call<'_>,
        deadline: Instant,
    ) -> Result<Map<String, Value>, WeChatError> {
        let request = match call {
            Call::Get(query) => self.inner.http.get(self.url(endpoint, query)),
            Call::PostJson(body) => self
                .inner
                .http
                .post(self.url(endpoint, &[]))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        };
        let exchange = async {
            let response = request
                .send()
                .await
                .map_err(|error| WeChatError::transport(endpoint, error))?;
            let status = response.status();
            if !status.is_success() {
                return Err(WeChatError::Status { endpoint, status });
            }
            let body = read_capped(endpoint, response).await?;
            match parse::parse_reply(&body).map_err(|problem| malformed(endpoint, problem))? {
                Reply::Ok(map) => Ok(map),
                Reply::Err { errcode, errmsg } => Err(WeChatError::Api {
                    endpoint,
                    errcode: Errcode::from_code(errcode),
                    errmsg,
                }),
            }
        };
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(WeChatError::Timeout { endpoint }));
        if let Some(observe) = &self.inner.observer {
            observe(endpoint, result.as_ref().map(|_| ()), started.elapsed());
        }
        result
    }

    fn url(&self, endpoint: Endpoint, query: &[(&str, &str)]) -> Url {
        let mut url = self.inner.api_base.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), endpoint.path());
        url.set_path(&path);
        url.set_fragment(None);
        if query.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(query);
        }
        url
    }
}

/// How a call carries its parameters: the `/sns/*` and ticket calls in the query, stable_token
/// as a JSON body (WeChat accepts nothing else there).
#[derive(Clone, Copy)]
enum Call<'a> {
    Get(&'a [(&'a str, &'a str)]),
    PostJson(&'a Value),
}

fn validate(settings: &ClientSettings) -> Result<(), WeChatError> {
    let base = &settings.api_base;
    if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
        return Err(WeChatError::Settings(
            "api_base must be an http(s) URL with a host",
        ));
    }
    if settings.appid.is_empty() {
        return Err(WeChatError::Settings("appid is empty"));
    }
    if settings.secret.is_empty() {
        return Err(WeChatError::Settings("secret is empty"));
    }
    if settings.timeout.is_zero() {
        return Err(WeChatError::Settings("timeout is zero"));
    }
    Ok(())
}

async fn read_capped(
    endpoint: Endpoint,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, WeChatError> {
    let too_large = || malformed(endpoint, Malformed::TooLarge(MAX_BODY_BYTES));
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| WeChatError::transport(endpoint, error))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn malformed(endpoint: Endpoint, problem: Malformed) -> WeChatError {
    WeChatError::Malformed { endpoint, problem }
}

fn jittered_backoff() -> Duration {
    Duration::from_millis(rand::rng().random_range(BACKOFF_MIN_MS..=BACKOFF_MAX_MS))
}

/// Logs a failed call by endpoint and errcode only, then hands the error back.
fn report(endpoint: Endpoint, error: WeChatError) -> WeChatError {
    tracing::warn!(
        endpoint = endpoint.path(),
        errcode = error.errcode().map(Errcode::code),
        kind = ?error.kind(),
        error = %error,
        "WeChat call failed"
    );
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base: &str) -> ClientSettings {
        ClientSettings {
            api_base: Url::parse(base).unwrap(),
            appid: "wx2ebfe5f20389c64a".into(),
            secret: Secret::new("s3cr3t"),
            timeout: Duration::from_secs(1),
            lang: "zh_CN".into(),
        }
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_the_query() {
        let client = WeChatClient::new(settings("http://127.0.0.1:9100/wx/")).unwrap();
        let url = client.url(
            Endpoint::UserInfo,
            &[("access_token", "a&b"), ("openid", "o")],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9100/wx/sns/userinfo?access_token=a%26b&openid=o"
        );
        let client = WeChatClient::new(settings("https://api.weixin.qq.com")).unwrap();
        let url = client.url(Endpoint::Auth, &[("openid", "o")]);
        assert_eq!(url.as_str(), "https://api.weixin.qq.com/sns/auth?openid=o");
    }

    #[test]
    fn bad_settings_are_refused_without_printing_the_secret() {
        let mut cases = vec![
            settings("ftp://x"),
            settings("http://x"),
            settings("http://x"),
        ];
        cases[1].appid.clear();
        cases[2].timeout = Duration::ZERO;
        for case in cases {
            let error = WeChatClient::new(case).unwrap_err();
            assert!(!format!("{error} {error:?}").contains("s3cr3t"));
        }
        let client = WeChatClient::new(settings("http://x")).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn backoff_stays_in_its_window() {
        for _ in 0..100 {
            let backoff = jittered_backoff();
            assert!((50..=150).contains(&(backoff.as_millis() as u64)));
        }
    }
}
