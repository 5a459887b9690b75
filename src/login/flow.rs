//! The login flow on the request path: who is sent to WeChat's authorize page, the callback
//! that turns a `code` into a session, and the gateway's own endpoints (`me`, `logout`,
//! `start`, `jwks.json`). The gate asks `authenticate` for every protected route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cookie::Cookie;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERER, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::body::{Body, full};
use crate::config::{Config, NonWeChat, Scope};
use crate::identity::{Claims, IdentityError, KeySet, plain_headers};
use crate::login::replay::{StateUse, UsedStates};
use crate::login::throttle::{ClientIp, Throttle, retry_after_secs};
use crate::login::{
    AuthScope, ClientSettings, CookieSpec, PendingLogins, ReturnUrl, StateKey, cookies,
    is_well_formed_state,
};
use crate::pages;
use crate::route::Route;
use crate::session::{
    CacheSettings, CachedSession, Lifetimes, MemoryStore, NewSession, Profile, SessionCache,
    SessionId, SessionStore, StoreSharing, WeChatToken, WeChatTokens,
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

/// The pending-login cookie's name before its `__Host-`/`__Secure-` prefix.
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
    #[error("session.store: {0:?} is not available in this build yet; use \"memory\"")]
    Store(crate::config::StoreKind),
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
    /// The session cookie's name on the wire (with its prefix).
    cookie_name: String,
    session_cookie_spec: CookieSpec,
    state_cookie: CookieSpec,
    throttle: Option<Throttle>,
    used_states: UsedStates,
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
        let store: Arc<dyn SessionStore> = match config.session.store {
            crate::config::StoreKind::Memory => Arc::new(MemoryStore::new(1_000_000)),
            other => return Err(LoginSetupError::Store(other)),
        };
        let lifetimes = Lifetimes::with_ttl(config.session.ttl);
        let sessions = SessionCache::new(
            store,
            CacheSettings::for_store(StoreSharing::Exclusive),
            lifetimes,
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
        let s = &config.session;
        let session_cookie_spec =
            CookieSpec::new(&s.cookie_name, s.cookie_secure, s.cookie_domain.as_deref());
        let state_cookie =
            CookieSpec::new(STATE_COOKIE, s.cookie_secure, s.cookie_domain.as_deref());
        let limits = &config.server.limits;
        Ok(Self {
            appid: config.wechat.appid.clone(),
            authorize_url: config.wechat.authorize_url.clone(),
            redirect_uri,
            public_origin,
            state_key: StateKey::derive(config.session.secret.expose().as_bytes())?,
            cookie_name: session_cookie_spec.name().to_owned(),
            session_cookie_spec,
            state_cookie,
            throttle: Throttle::new(limits.login_rate, limits.login_burst),
            used_states: UsedStates::default(),
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
            Ok(return_url) => Access::Respond(self.begin(request, return_url, scope)),
            Err(_) => Access::Respond(pages::respond(
                &pages::Failure::BadRequest("bad return url"),
                request.headers(),
            )),
        }
    }

    /// 302 to WeChat's authorize page, with a new state remembered in the state cookie.
    /// Counted against the client's login rate.
    fn begin<B>(
        &self,
        request: &Request<B>,
        return_url: ReturnUrl,
        scope: AuthScope,
    ) -> Response<Body> {
        let headers = request.headers();
        if let Some(limited) = self.over_rate(request) {
            return limited;
        }
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, self.state_cookie.read(headers), now);
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
        let state_cookie = pending.to_cookie(&self.state_key, &self.state_cookie);
        set_cookie(&mut response, &state_cookie);
        response
    }

    /// Counts a login start or callback against the client's rate; `Some` is the 429 to
    /// answer with.
    fn over_rate<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        let throttle = self.throttle.as_ref()?;
        // The gate always sets it; without it every caller shares the unspecified address.
        let ip = request
            .extensions()
            .get::<ClientIp>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0);
        let wait = throttle.check(ip).err()?;
        tracing::info!(client = %ip, "login rate exceeded");
        Some(pages::respond(
            &pages::Failure::TooManyRequests(retry_after_secs(wait)),
            request.headers(),
        ))
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

    /// WeChat's redirect back. In this order, so that nothing unverified reaches WeChat's
    /// API: method, rate, one well-formed `state`, the state cookie holding it, not used
    /// before; only then is the `code` exchanged.
    async fn callback<B>(&self, request: &Request<B>) -> Response<Body> {
        let headers = request.headers();
        if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            let mut r = message_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "请求无效",
                "Method not allowed",
                "The login callback only takes GET.",
                None,
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if let Some(limited) = self.over_rate(request) {
            return limited;
        }
        let Some(CallbackQuery { state, code }) = CallbackQuery::parse(request.uri().query())
        else {
            return self.callback_without_state(headers, "").await;
        };
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, self.state_cookie.read(headers), now);
        let Some(entry) = pending.take(&state, now) else {
            return self.callback_without_state(headers, &state).await;
        };
        match self.used_states.consume(&state) {
            StateUse::First => {}
            StateUse::Replayed => return self.callback_without_state(headers, &state).await,
            StateUse::Full => {
                tracing::warn!("too many logins in flight to remember another used state");
                return pages::respond(&pages::Failure::Unavailable, headers);
            }
        }
        let retry = Some(entry.return_url.as_str().to_owned());
        let mut response = match code.as_deref().filter(|c| !c.is_empty()) {
            None => message_page(
                StatusCode::FORBIDDEN,
                "你已拒绝授权",
                "Authorization declined",
                "需要你的授权才能继续访问此页面。",
                retry,
            ),
            Some(code) => match self.complete(code, entry.scope).await {
                Ok(id) => {
                    self.revoke_previous(headers).await;
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
            &pending.to_cookie(&self.state_key, &self.state_cookie),
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
            Some(url) => self.begin(request, url, scope),
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

    /// The session cookie (`__Host-` prefixed when secure without a domain), or its removal.
    fn session_cookie(&self, value: String, removal: bool) -> Cookie<'static> {
        if removal {
            return self.session_cookie_spec.removal();
        }
        let mut c = self.session_cookie_spec.build(value);
        c.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(self.sessions.lifetimes().ttl.as_secs()).unwrap_or(i64::MAX),
        ));
        c
    }

    /// A new login replaces the session the browser held: that one is revoked, so a copy of
    /// the old cookie (or one planted before the login) is worth nothing afterwards.
    async fn revoke_previous(&self, headers: &HeaderMap) {
        let Some(old) = cookie(headers, &self.cookie_name).and_then(SessionId::from_cookie) else {
            return;
        };
        if let Err(e) = self.sessions.delete(&old.storage_key()).await {
            tracing::warn!(error = %e, "previous session could not be revoked");
        }
    }

    /// Drops upstream `Set-Cookie`s for the gateway's own cookie names: an application
    /// must not be able to replace or clear the visitor's session or pending logins.
    pub fn strip_own_cookies(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(SET_COOKIE) {
            return;
        }
        let own = [self.cookie_name.as_str(), self.state_cookie.name()];
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| !sets_one_of(v.as_bytes(), &own))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for v in kept {
            headers.append(SET_COOKIE, v);
        }
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
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
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
    cookies::read(headers, name)
}

/// Whether a `Set-Cookie` value sets one of `names` (prefixes compared without case, as
/// browsers do).
fn sets_one_of(set_cookie: &[u8], names: &[&str]) -> bool {
    let name_end = set_cookie
        .iter()
        .position(|&b| b == b'=' || b == b';')
        .unwrap_or(set_cookie.len());
    let name = set_cookie[..name_end].trim_ascii();
    names
        .iter()
        .any(|own| name.eq_ignore_ascii_case(own.as_bytes()))
}

/// The callback's query: exactly one `state` of the shape this gateway issues, at most one
/// `code`. Anything else is not a callback WeChat made.
struct CallbackQuery {
    state: String,
    code: Option<String>,
}

impl CallbackQuery {
    fn parse(query: Option<&str>) -> Option<Self> {
        let mut state = None;
        let mut code = None;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match k.as_ref() {
                "state" => &mut state,
                "code" => &mut code,
                _ => continue,
            };
            if slot.replace(v.into_owned()).is_some() {
                return None;
            }
        }
        let state = state.filter(|s| is_well_formed_state(s))?;
        Some(CallbackQuery { state, code })
    }
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
