//! The login flow on the request path: who is sent to WeChat's authorize page, the callback
//! that turns a `code` into a session, and the gateway's own endpoints (`me`, `logout`,
//! `start`, `jwks.json`). The gate asks `authenticate` for every protected route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, REFERER, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::body::{Body, full};
use crate::config::{Config, NonWeChat, Scope};
use crate::identity::{Claims, IdentityError, KeySet, plain_headers};
use crate::login::{AuthScope, ClientSettings, PendingLogins, ReturnUrl, StateKey};
use crate::pages;
use crate::route::Route;
use crate::session::{
    CachedSession, Lifetimes, NewSession, Profile, SessionCache, SessionId, WeChatToken,
    WeChatTokens,
};
use crate::wechat::{ClientSettings as WeChatSettings, ErrorKind, WeChatClient, WeChatError};

/// What JavaScript's encodeURIComponent escapes: WeChat's documentation builds redirect_uri with it.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The pending-login cookie; its path limits it to the callback and start endpoints.
const STATE_COOKIE: &str = "wxgate_state";
/// How long a finished callback is remembered, so WeChat's double load lands on the page.
const RECENT_CALLBACK: Duration = Duration::from_secs(120);
const MAX_RECENT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum LoginSetupError {
    #[error("session.secret: {0}")]
    State(#[from] crate::login::StateError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("wechat: {0}")]
    WeChat(#[from] WeChatError),
    #[error("session store: {0}")]
    Store(#[from] crate::session::StoreOpenError),
}

/// What the gate does with a request on a protected route.
pub enum Access {
    /// Forward it with these identity headers.
    Granted(Vec<(HeaderName, HeaderValue)>),
    /// Forward it without identity (`non_wechat = "anonymous"`).
    Anonymous,
    /// Answer it here (redirect to WeChat, 401, QR page, error page).
    Respond(Response<Body>),
}

pub struct Login {
    appid: String,
    authorize_url: url::Url,
    redirect_uri: String,
    public_origin: url::Url,
    state_key: StateKey,
    cookie_name: String,
    cookie_secure: bool,
    sessions: SessionCache,
    wechat: WeChatClient,
    keys: KeySet,
    identity_header: HeaderName,
    issuer: String,
    audience: String,
    identity_ttl: Duration,
    plain_headers: bool,
    clients: ClientSettings,
    recent: Mutex<HashMap<String, (Instant, String)>>,
}

impl Login {
    /// Built when the configuration has a WeChat route; `validate` has checked the keys.
    pub fn new(config: &Config) -> Result<Self, LoginSetupError> {
        let public_origin = config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| config.wechat.api_base.clone());
        let redirect_uri = format!(
            "{}/_wxgate/callback",
            public_origin.as_str().trim_end_matches('/')
        );
        let sessions = SessionCache::new(
            crate::session::open_store(&config.session)?,
            crate::session::cache_settings(&config.session),
            crate::session::lifetimes(&config.session),
        );
        let wechat = WeChatClient::new(WeChatSettings {
            api_base: config.wechat.api_base.clone(),
            appid: config.wechat.appid.clone(),
            secret: config.wechat.secret.clone(),
            timeout: config.wechat.timeout,
            lang: config.wechat.lang.clone(),
        })?;
        let (current, previous) = config.identity.key_sources();
        let identity_header = HeaderName::from_bytes(config.identity.header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-wechat-identity"));
        Ok(Self {
            appid: config.wechat.appid.clone(),
            authorize_url: config.wechat.authorize_url.clone(),
            redirect_uri,
            public_origin,
            state_key: StateKey::derive(config.session.secret.expose().as_bytes())?,
            cookie_name: config.session.cookie_name.clone(),
            cookie_secure: config.session.cookie_secure,
            sessions,
            wechat,
            keys: KeySet::load(&current, &previous)?,
            identity_header,
            issuer: config.identity.issuer.clone(),
            audience: config.identity.audience.clone(),
            identity_ttl: config.identity.ttl,
            plain_headers: config.identity.plain_headers,
            clients: ClientSettings::default(),
            recent: Mutex::new(HashMap::new()),
        })
    }

    /// The sessions, for the admin listener's readiness probe.
    pub fn sessions(&self) -> &SessionCache {
        &self.sessions
    }

    /// The header the identity JWT travels in; clients' copies of it are always stripped.
    pub fn identity_header(&self) -> &HeaderName {
        &self.identity_header
    }

    /// Decides a request on a protected route: identity, a login, or a refusal.
    pub async fn authenticate<B>(&self, request: &Request<B>, route: &Route) -> Access {
        let required = match route.scope {
            Scope::Public => return Access::Anonymous,
            Scope::SnsapiBase => AuthScope::Base,
            Scope::SnsapiUserinfo => AuthScope::UserInfo,
        };
        let session = match self.session_of(request.headers()).await {
            Ok(session) => session,
            Err(response) => return Access::Respond(response),
        };
        if let Some((_, cached)) = &session {
            let s = &cached.session;
            if s.snapshot && !route.allow_snapshot {
                return Access::Respond(message_page(
                    StatusCode::FORBIDDEN,
                    "请使用完整服务",
                    "This page needs your WeChat profile",
                    "快照页模式下无法使用此页面，请点击页面下方「使用完整服务」后再试。",
                    None,
                ));
            }
            if s.scope.satisfies(required) {
                return match self.identity_headers(cached) {
                    Ok(headers) => Access::Granted(headers),
                    Err(e) => {
                        tracing::error!(error = %e, "identity token could not be signed");
                        Access::Respond(pages::respond(
                            &pages::Failure::Unavailable,
                            request.headers(),
                        ))
                    }
                };
            }
        }
        self.challenge(request, route, required)
    }

    /// No sufficient session: WeChat browsers go to authorize, scripts get 401 JSON,
    /// other browsers get the route's `non_wechat` behaviour.
    fn challenge<B>(&self, request: &Request<B>, route: &Route, scope: AuthScope) -> Access {
        let client = self.clients.classify(request.method(), request.headers());
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if client.wants_json {
            let page = same_site_referer(request.headers(), &self.public_origin)
                .unwrap_or_else(|| "/".to_owned());
            let login_url = format!(
                "/_wxgate/start?rd={}",
                utf8_percent_encode(&page, URI_COMPONENT)
            );
            let body = serde_json::json!({"error": "login_required", "status": 401, "login_url": login_url});
            return Access::Respond(json(StatusCode::UNAUTHORIZED, &body));
        }
        if !client.is_wechat_browser {
            return match route.non_wechat {
                NonWeChat::Anonymous => Access::Anonymous,
                NonWeChat::Deny => Access::Respond(message_page(
                    StatusCode::FORBIDDEN,
                    "请在微信中打开",
                    "Open this page in WeChat",
                    "此页面仅支持在微信客户端内访问。",
                    None,
                )),
                NonWeChat::Qrcode => {
                    let url = format!(
                        "{}{}",
                        self.public_origin.as_str().trim_end_matches('/'),
                        target
                    );
                    let mut response = html(StatusCode::OK, crate::pages::qr::render(&url));
                    response.headers_mut().insert(
                        "content-security-policy",
                        HeaderValue::from_static(crate::pages::qr::CONTENT_SECURITY_POLICY),
                    );
                    Access::Respond(response)
                }
            };
        }
        let return_url =
            ReturnUrl::from_request_target(target).or_else(|_| ReturnUrl::from_request_target("/"));
        match return_url {
            Ok(return_url) => Access::Respond(self.begin(request.headers(), return_url, scope)),
            Err(_) => Access::Respond(pages::respond(
                &pages::Failure::BadRequest("bad return url"),
                request.headers(),
            )),
        }
    }

    /// 302 to WeChat's authorize page, with a new state remembered in the state cookie.
    fn begin(
        &self,
        headers: &HeaderMap,
        return_url: ReturnUrl,
        scope: AuthScope,
    ) -> Response<Body> {
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, cookie(headers, STATE_COOKIE), now);
        let state = pending.begin(return_url, scope, now);
        // WeChat checks the order of these parameters: appid, redirect_uri, response_type, scope, state.
        let location = format!(
            "{}?appid={}&redirect_uri={}&response_type=code&scope={}&state={}&connect_redirect=1#wechat_redirect",
            self.authorize_url,
            utf8_percent_encode(&self.appid, URI_COMPONENT),
            utf8_percent_encode(&self.redirect_uri, URI_COMPONENT),
            scope.as_str(),
            state,
        );
        let mut response = redirect(&location);
        let state_cookie = pending.to_cookie(&self.state_key, STATE_COOKIE, self.cookie_secure);
        set_cookie(&mut response, &state_cookie);
        response
    }

    /// The gateway's own endpoints under `/_wxgate/`.
    pub async fn endpoint<B>(&self, path: &str, request: &Request<B>) -> Response<Body> {
        match path {
            "/_wxgate/callback" => self.callback(request).await,
            "/_wxgate/me" => self.me(request).await,
            "/_wxgate/logout" => self.logout(request).await,
            "/_wxgate/start" => self.start(request),
            "/_wxgate/jwks.json" => {
                let mut r = Response::new(full(self.keys.jwks().clone()));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r.headers_mut().insert(
                    CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                r
            }
            _ => pages::respond(&pages::Failure::NoRoute, request.headers()),
        }
    }

    async fn callback<B>(&self, request: &Request<B>) -> Response<Body> {
        let headers = request.headers();
        let query = query_pairs(request.uri().query());
        let state = query.get("state").cloned().unwrap_or_default();
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, cookie(headers, STATE_COOKIE), now);
        let Some(entry) = pending.take(&state, now) else {
            return self.callback_without_state(headers, &state).await;
        };
        let retry = Some(entry.return_url.as_str().to_owned());
        let mut response = match query.get("code").filter(|c| !c.is_empty()) {
            None => message_page(
                StatusCode::FORBIDDEN,
                "你已拒绝授权",
                "Authorization declined",
                "需要你的授权才能继续访问此页面。",
                retry,
            ),
            Some(code) => match self.complete(code, entry.scope).await {
                Ok(id) => {
                    self.remember(&state, entry.return_url.as_str());
                    let mut r = redirect(entry.return_url.as_str());
                    set_cookie(
                        &mut r,
                        &self.session_cookie(id.cookie_value().to_owned(), false),
                    );
                    r
                }
                Err(e) => wechat_failure_page(&e, retry),
            },
        };
        set_cookie(
            &mut response,
            &pending.to_cookie(&self.state_key, STATE_COOKIE, self.cookie_secure),
        );
        response
            .headers_mut()
            .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        response
    }

    /// A state this browser no longer holds: the second load of a finished callback lands on
    /// its page; anything else is a clear error, never a new redirect (no loop).
    async fn callback_without_state(&self, headers: &HeaderMap, state: &str) -> Response<Body> {
        let recent = self.recall(state);
        if let (Some(url), Ok(Some(_))) = (recent, self.session_of(headers).await) {
            let mut r = redirect(&url);
            r.headers_mut()
                .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
            return r;
        }
        let mut r = message_page(
            StatusCode::BAD_REQUEST,
            "登录已失效",
            "This login link has expired",
            "请返回页面重新打开，以重新登录。",
            Some("/".to_owned()),
        );
        r.headers_mut()
            .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        r
    }

    /// Exchanges the code, fetches the profile for snsapi_userinfo, stores the session.
    async fn complete(&self, code: &str, scope: AuthScope) -> Result<SessionId, CallbackError> {
        let grant = self.wechat.exchange_code(code).await?;
        let now = SystemTime::now();
        let granted = if grant.allows_userinfo() {
            AuthScope::UserInfo
        } else {
            AuthScope::Base
        };
        let mut unionid = grant.unionid.clone();
        let profile = if granted == AuthScope::UserInfo
            && scope == AuthScope::UserInfo
            && !grant.is_snapshotuser
        {
            let info = self
                .wechat
                .userinfo(grant.access_token.expose(), &grant.openid)
                .await?;
            unionid = info.unionid.clone().or(unionid);
            Some(Profile {
                nickname: info.nickname,
                headimgurl: info.headimgurl,
                sex: info.sex,
                province: info.province,
                city: info.city,
                country: info.country,
                privilege: info.privilege,
            })
        } else {
            None
        };
        let login = NewSession {
            appid: self.appid.clone(),
            openid: grant.openid.clone(),
            unionid,
            scope: granted,
            snapshot: grant.is_snapshotuser,
            profile,
            tokens: WeChatTokens {
                access_token: WeChatToken::new(grant.access_token.expose()),
                access_expires_at: now + grant.expires_in,
                refresh_token: WeChatToken::new(grant.refresh_token.expose()),
                refresh_expires_at: now + Lifetimes::DEFAULT_MAX_LIFETIME,
            },
        };
        let (id, _) = self
            .sessions
            .create(login)
            .await
            .map_err(CallbackError::Store)?;
        Ok(id)
    }

    async fn me<B>(&self, request: &Request<B>) -> Response<Body> {
        match self.session_of(request.headers()).await {
            Ok(Some((_, cached))) => {
                let claims = self.claims(&cached.session, SystemTime::now());
                let mut me = serde_json::to_value(&claims).unwrap_or_default();
                if let Some(fields) = me.as_object_mut() {
                    // The visitor's facts, not a token's envelope.
                    for envelope in ["iss", "aud", "iat", "exp", "jti"] {
                        fields.remove(envelope);
                    }
                }
                let mut r = json(StatusCode::OK, &me);
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Ok(None) => json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "login_required", "status": 401, "login_url": "/_wxgate/start?rd=%2F"}),
            ),
            Err(response) => response,
        }
    }

    async fn logout<B>(&self, request: &Request<B>) -> Response<Body> {
        if let Some(id) =
            cookie(request.headers(), &self.cookie_name).and_then(SessionId::from_cookie)
        {
            if let Err(e) = self.sessions.delete(&id.storage_key()).await {
                tracing::warn!(error = %e, "session could not be deleted from the store");
            }
        }
        let query = query_pairs(request.uri().query());
        let target = query
            .get("rd")
            .and_then(|rd| ReturnUrl::from_rd(rd, &self.public_origin, &[]).ok())
            .map_or_else(|| "/".to_owned(), ReturnUrl::into_string);
        let mut r = redirect(&target);
        set_cookie(&mut r, &self.session_cookie(String::new(), true));
        r
    }

    /// Begins a login for a same-site `rd` (what a forward-auth 401 or an XHR client uses).
    fn start<B>(&self, request: &Request<B>) -> Response<Body> {
        let query = query_pairs(request.uri().query());
        let return_url = query
            .get("rd")
            .and_then(|rd| ReturnUrl::from_rd(rd, &self.public_origin, &[]).ok())
            .or_else(|| ReturnUrl::from_request_target("/").ok());
        let scope = match query.get("scope").map(String::as_str) {
            Some("snsapi_base") => AuthScope::Base,
            _ => AuthScope::UserInfo,
        };
        match return_url {
            Some(url) => self.begin(request.headers(), url, scope),
            None => pages::respond(&pages::Failure::BadRequest("bad rd"), request.headers()),
        }
    }

    /// The live session the request's cookie names, if any; a store failure is a 503.
    async fn session_of(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(SessionId, Arc<CachedSession>)>, Response<Body>> {
        let Some(id) = cookie(headers, &self.cookie_name).and_then(SessionId::from_cookie) else {
            return Ok(None);
        };
        let key = id.storage_key();
        match self.sessions.load(&key).await {
            Ok(Some(cached)) => {
                if let Err(e) = self.sessions.touch(&key, &cached).await {
                    tracing::warn!(error = %e, "session last-seen could not be written");
                }
                Ok(Some((id, cached)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "session store failed");
                Err(pages::respond(&pages::Failure::Unavailable, headers))
            }
        }
    }

    fn identity_headers(
        &self,
        cached: &CachedSession,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, IdentityError> {
        let now = SystemTime::now();
        let minted = cached.identity_or_mint(now, |s| self.keys.mint(&self.claims(s, now)))?;
        let mut headers = vec![(self.identity_header.clone(), minted.value().clone())];
        if self.plain_headers {
            headers.extend(plain_headers(&self.claims(&cached.session, now)));
        }
        Ok(headers)
    }

    fn claims(&self, session: &crate::session::Session, now: SystemTime) -> Claims {
        Claims::new(
            session.identity_facts(),
            &self.issuer,
            &self.audience,
            self.identity_ttl,
            now,
        )
    }

    fn session_cookie(&self, value: String, removal: bool) -> Cookie<'static> {
        let mut c = Cookie::build((self.cookie_name.clone(), value))
            .path("/")
            .http_only(true)
            .secure(self.cookie_secure)
            .same_site(SameSite::Lax)
            .build();
        if removal {
            c.make_removal();
        } else {
            c.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(self.sessions.lifetimes().ttl.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        c
    }

    fn remember(&self, state: &str, url: &str) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if recent.len() >= MAX_RECENT {
            recent.retain(|_, (at, _)| now.duration_since(*at) < RECENT_CALLBACK);
        }
        if recent.len() < MAX_RECENT {
            recent.insert(state.to_owned(), (now, url.to_owned()));
        }
    }

    fn recall(&self, state: &str) -> Option<String> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent
            .get(state)
            .filter(|(at, _)| at.elapsed() < RECENT_CALLBACK)
            .map(|(_, url)| url.clone())
    }
}

#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error(transparent)]
    WeChat(#[from] WeChatError),
    #[error("session store: {0}")]
    Store(crate::session::StoreError),
}

/// WeChat failures as the visitor sees them: 4xx when the browser's code is bad, 502/503/504
/// when WeChat is, each with a retry link and never a redirect.
fn wechat_failure_page(error: &CallbackError, retry: Option<String>) -> Response<Body> {
    tracing::warn!(error = %error, "login callback failed");
    let (status, zh, en, detail) = match error {
        CallbackError::WeChat(e) => match e.kind() {
            ErrorKind::BadCode => (
                StatusCode::BAD_REQUEST,
                "登录已失效",
                "Login expired",
                "授权码已失效或已被使用，请重试。",
            ),
            ErrorKind::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "微信响应超时",
                "WeChat timed out",
                "微信服务器响应超时，请稍后重试。",
            ),
            ErrorKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "微信服务繁忙",
                "WeChat is busy",
                "微信服务器繁忙，请稍后重试。",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "登录失败",
                "Login failed",
                "与微信通信失败，请稍后重试。",
            ),
        },
        CallbackError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "服务繁忙",
            "Service unavailable",
            "会话存储暂时不可用，请稍后重试。",
        ),
    };
    message_page(status, zh, en, detail, retry)
}

fn message_page(
    status: StatusCode,
    zh: &str,
    en: &str,
    detail: &str,
    retry: Option<String>,
) -> Response<Body> {
    let link = retry
        .map(|url| {
            format!(
                "<a class=\"btn\" href=\"{}\">重试 · Retry</a>",
                pages::escape(&url)
            )
        })
        .unwrap_or_default();
    let body = pages::page(
        &format!("{zh} · {en}"),
        &format!(
            "<p class=\"code\">{}</p><h1>{}</h1><h2>{}</h2><p>{}</p>{link}",
            status.as_u16(),
            pages::escape(zh),
            pages::escape(en),
            pages::escape(detail)
        ),
    );
    html(status, body)
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, value);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn set_cookie(response: &mut Response<Body>, cookie: &Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// The value of cookie `name`; several cookies of that name mean none (a planted duplicate).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(v);
                }
            }
        }
    }
    found
}

fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The page an XHR came from, when it is on the gateway's own origin.
fn same_site_referer(headers: &HeaderMap, origin: &url::Url) -> Option<String> {
    let referer = headers.get(REFERER)?.to_str().ok()?;
    ReturnUrl::from_rd(referer, origin, &[])
        .ok()
        .map(ReturnUrl::into_string)
}
