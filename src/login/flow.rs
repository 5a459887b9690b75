//! The login flow on the request path: who is sent to WeChat's authorize page, the callback
//! that turns a `code` into a session, and the gateway's own endpoints (`me`, `logout`,
//! `start`, `jwks.json`). The gate asks `authenticate` for every protected route.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cookie::Cookie;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, REFERER, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::access::{self, AccessRule, RuleLoader};
use crate::body::{Body, full};
use crate::config::{Config, NonWeChat, Scope};
use crate::identity::{Claims, IdentityError, KeySet, SNAPSHOT_HEADER, plain_headers};
use crate::login::flight::{self, Claim, FlightKey, Outcome};
use crate::login::ledger::LoginLedger;
use crate::login::refresh::{Freshness, ProfileRefresher, freshness, profile_of};
use crate::login::throttle::{ClientIp, retry_after_secs};
use crate::login::{
    AuthScope, BrowserPolicy, CookieSpec, Pending, PendingLogins, ReturnUrl, StateKey, cookies,
    is_well_formed_state,
};
use crate::metrics::{LoginMetrics, MeteredStore, Metrics};
use crate::pages;
use crate::route::Route;
use crate::session::{
    CachedSession, Lifetimes, NewSession, Session, SessionCache, SessionId, SessionStore,
    WeChatToken, WeChatTokens,
};
use crate::wechat::{
    CallObserver, ClientSettings as WeChatSettings, ErrorKind, WeChatClient, WeChatError,
};

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
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// What the gate does with a request on a protected route.
pub enum Access {
    /// Forward it with these identity headers.
    Granted(Vec<(HeaderName, HeaderValue)>),
    /// Forward it without identity (`non_wechat = "anonymous"`).
    Anonymous,
    /// Answer it here (redirect to WeChat, 401, QR page, error page). Boxed: the other
    /// variants, one of which nearly every request gets, stay small.
    Respond(Box<Response<Body>>),
}

impl Access {
    fn respond(response: Response<Body>) -> Self {
        Access::Respond(Box::new(response))
    }
}

/// How a WeChat navigation leaves for the authorize page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// Through the hash hop page, which reports the page's `#fragment` first.
    Hop,
    /// A plain 302 (the fragment, if any, is lost).
    Redirect,
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
    /// Single flights, used states and limits: the gateway's, outliving this configuration.
    ledger: Arc<LoginLedger>,
    flight_key: FlightKey,
    /// How long a second load of a callback waits for the first's exchange.
    flight_patience: Duration,
    sessions: Arc<SessionCache>,
    wechat: WeChatClient,
    refresher: ProfileRefresher,
    profile_refresh: Duration,
    metrics: LoginMetrics,
    keys: KeySet,
    identity_header: HeaderName,
    issuer: String,
    audience: String,
    identity_ttl: Duration,
    /// Names this login's signing key and claim settings, so tokens cached with sessions
    /// under another configuration are minted again after a reload.
    signer: u64,
    plain_headers: bool,
    browsers: BrowserPolicy,
    /// The `[[apps]]` entry served, if not `[wechat]`.
    app: Option<String>,
    /// Who may pass forward-auth: the app's `access` list; `None`: everyone.
    access: Option<Arc<AccessRule>>,
}

impl Login {
    /// The login of `[[apps]]` entry `app` (`None`: `[wechat]`), whose settings `config`
    /// carries in `[wechat]` (see `Config::for_app`). An app has its own callback
    /// (`/_wxgate/callback/<name>`) and cookies (`<cookie_name>_<name>`), so a visitor may be
    /// logged in to several Official Accounts at once.
    pub fn for_app(
        config: &Config,
        metrics: &Metrics,
        sessions: Option<Arc<SessionCache>>,
        ledger: Option<Arc<LoginLedger>>,
        app: Option<&str>,
    ) -> Result<Self, LoginSetupError> {
        let suffix = app.map(|name| format!("_{name}")).unwrap_or_default();
        let public_origin = config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| config.wechat.api_base.clone());
        let redirect_uri = format!(
            "{}/_wxgate/callback{}",
            public_origin.as_str().trim_end_matches('/'),
            app.map(|name| format!("/{name}")).unwrap_or_default()
        );
        let sessions = match sessions {
            Some(sessions) => sessions,
            None => open_sessions(config, metrics)?,
        };
        let wechat_metrics = metrics.wechat.clone();
        let observer: CallObserver = Arc::new(move |endpoint, outcome, elapsed| {
            let label = outcome.map_or_else(WeChatError::metric_label, |()| "0".to_owned());
            wechat_metrics.call(endpoint.path(), label, elapsed);
        });
        let wechat = WeChatClient::observed(
            WeChatSettings {
                api_base: config.wechat.api_base.clone(),
                appid: config.wechat.appid.clone(),
                secret: config.wechat.secret.clone(),
                timeout: config.wechat.timeout,
                lang: config.wechat.lang.clone(),
            },
            Some(observer),
        )?;
        let (current, previous) = config.identity.key_sources();
        let keys = KeySet::load(&current, &previous)?;
        let signer = signer_of(&config.identity, &keys);
        let identity_header = HeaderName::from_bytes(config.identity.header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-wechat-identity"));
        let s = &config.session;
        let session_cookie_spec = CookieSpec::new(
            &format!("{}{suffix}", s.cookie_name),
            s.cookie_secure,
            s.cookie_domain.as_deref(),
        );
        let state_cookie = CookieSpec::new(
            &format!("{STATE_COOKIE}{suffix}"),
            s.cookie_secure,
            s.cookie_domain.as_deref(),
        );
        let access = match &config.wechat.access {
            Some(list) => {
                let key = app.map_or_else(
                    || "wechat.access".to_owned(),
                    |n| format!("apps[{n}].access"),
                );
                Some(Arc::new(RuleLoader::default().load(&key, list)?))
            }
            None => None,
        };
        let ledger = ledger.unwrap_or_else(|| Arc::new(LoginLedger::new(&config.server.limits)));
        Ok(Self {
            appid: config.wechat.appid.clone(),
            authorize_url: config.wechat.authorize_url.clone(),
            redirect_uri,
            public_origin,
            state_key: StateKey::derive(config.session.secret.expose().as_bytes())?,
            cookie_name: session_cookie_spec.name().to_owned(),
            session_cookie_spec,
            state_cookie,
            ledger,
            flight_key: FlightKey::derive(config.session.secret.expose().as_bytes()),
            // The exchange, the profile and the store write, each bounded by its timeout.
            flight_patience: config.wechat.timeout * 2
                + config.session.store_timeout
                + Duration::from_secs(1),
            refresher: ProfileRefresher::new(
                wechat.clone(),
                sessions.clone(),
                metrics.login.clone(),
            ),
            metrics: metrics.login.clone(),
            profile_refresh: config.session.profile_refresh,
            sessions,
            wechat,
            keys,
            identity_header,
            issuer: config.identity.issuer.clone(),
            audience: config.identity.audience.clone(),
            identity_ttl: config.identity.ttl,
            signer,
            plain_headers: config.identity.plain_headers,
            browsers: BrowserPolicy::from_config(&config.wechat.browsers),
            app: app.map(str::to_owned),
            access,
        })
    }

    /// The `[[apps]]` name this login serves; `None` for `[wechat]`.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// The sessions, to hand on to the gate of a reloaded configuration.
    pub fn sessions(&self) -> &Arc<SessionCache> {
        &self.sessions
    }

    /// Takes the gateway's own cookies (session and pending logins) out of a request bound
    /// upstream: the identity header is what upstreams get, never the session id.
    pub fn remove_own_cookies(&self, headers: &mut HeaderMap) {
        remove_cookies(headers, [&self.cookie_name, self.state_cookie.name()]);
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
            Err(response) => return Access::respond(response),
        };
        if let Some((id, cached)) = &session {
            let s = &cached.session;
            if s.snapshot && !route.allow_snapshot {
                return Access::respond(message_page(
                    StatusCode::FORBIDDEN,
                    "请使用完整服务",
                    "This page needs your WeChat profile",
                    "快照页模式下无法使用此页面，请点击页面下方「使用完整服务」后再试。",
                    None,
                ));
            }
            if s.scope.satisfies(required) {
                // Checked once the session is what the route asks for: a login upgraded to
                // snsapi_userinfo may bring the unionid a list names.
                if let Some(refused) = refused(route.access.as_deref(), s, request.headers()) {
                    return refused;
                }
                if self.must_reauthorize(request, id, s) {
                    // Ask again for what the session had, never less.
                    return self.challenge(
                        request,
                        route.non_wechat,
                        s.scope,
                        requested_page(request),
                        Departure::Hop,
                    );
                }
                return self.grant(request, cached);
            }
        }
        match self.challenge(
            request,
            route.non_wechat,
            required,
            requested_page(request),
            Departure::Hop,
        ) {
            // A list admits people WeChat named; an anonymous visitor is none of them.
            Access::Anonymous if route.access.is_some() => Access::respond(message_page(
                StatusCode::FORBIDDEN,
                "请在微信中打开",
                "Open this page in WeChat",
                "此页面仅对指定的微信用户开放，请在微信客户端内访问。",
                None,
            )),
            access => access,
        }
    }

    fn grant<B>(&self, request: &Request<B>, cached: &CachedSession) -> Access {
        match self.identity_headers(cached) {
            Ok(headers) => Access::Granted(headers),
            Err(e) => {
                tracing::error!(error = %e, "identity token could not be signed");
                Access::respond(pages::respond(
                    &pages::Failure::Unavailable,
                    request.headers(),
                ))
            }
        }
    }

    /// Looks after the profile of a session about to be served: a stale one is refreshed in
    /// the background; one WeChat will no longer refresh sends a navigation back through
    /// authorize (scripts keep the identity they have: a redirect cannot help them).
    fn must_reauthorize<B>(&self, request: &Request<B>, id: &SessionId, session: &Session) -> bool {
        match freshness(session, SystemTime::now(), self.profile_refresh) {
            Freshness::Fresh => false,
            Freshness::Refreshable => {
                self.refresher.spawn(id.storage_key(), session.clone());
                false
            }
            Freshness::Reauthorize => {
                let client = self.browsers.classify(request.method(), request.headers());
                client.is_wechat_browser && !client.wants_json
            }
        }
    }

    /// No sufficient session: WeChat browsers go to authorize, scripts get 401 JSON,
    /// other browsers get the route's `non_wechat` behaviour.
    fn challenge<B>(
        &self,
        request: &Request<B>,
        non_wechat: NonWeChat,
        scope: AuthScope,
        return_url: ReturnUrl,
        departure: Departure,
    ) -> Access {
        let client = self.browsers.classify(request.method(), request.headers());
        if client.wants_json {
            return Access::respond(self.login_required(request.headers(), None, scope));
        }
        if !client.is_wechat_browser {
            return match non_wechat {
                NonWeChat::Anonymous => Access::Anonymous,
                NonWeChat::Deny => Access::respond(message_page(
                    StatusCode::FORBIDDEN,
                    "请在微信中打开",
                    "Open this page in WeChat",
                    "此页面仅支持在微信客户端内访问。",
                    None,
                )),
                NonWeChat::Qrcode => Access::respond(self.qr_page(&return_url)),
            };
        }
        Access::respond(self.begin(request, return_url, scope, departure))
    }

    /// 401 JSON for scripts, with the login URL a page's script can send the visitor to:
    /// back to `page` if given, else to the page the script runs on (its Referer), asking
    /// for `scope` and no more (a consent sheet nobody needed invites snapshot mode).
    fn login_required(
        &self,
        headers: &HeaderMap,
        page: Option<&ReturnUrl>,
        scope: AuthScope,
    ) -> Response<Body> {
        let page = page
            .map(|p| p.as_str().to_owned())
            .or_else(|| same_site_referer(headers, &self.public_origin))
            .unwrap_or_else(|| "/".to_owned());
        let login_url = format!(
            "/_wxgate/start?rd={}&scope={}{}",
            utf8_percent_encode(&page, URI_COMPONENT),
            scope.as_str(),
            self.app_param()
        );
        let body =
            serde_json::json!({"error": "login_required", "status": 401, "login_url": login_url});
        json(StatusCode::UNAUTHORIZED, &body)
    }

    /// `&app=<name>` for an `[[apps]]` login, so endpoints reached from its pages find it.
    fn app_param(&self) -> String {
        self.app
            .as_ref()
            .map(|name| format!("&app={name}"))
            .unwrap_or_default()
    }

    /// The page for other browsers: a QR code of the page, to open in WeChat.
    fn qr_page(&self, return_url: &ReturnUrl) -> Response<Body> {
        let target = return_url.as_str();
        let url = if target.starts_with('/') {
            format!(
                "{}{}",
                self.public_origin.as_str().trim_end_matches('/'),
                target
            )
        } else {
            target.to_owned()
        };
        let mut response = html(StatusCode::OK, crate::pages::qr::render(&url));
        response.headers_mut().insert(
            "content-security-policy",
            HeaderValue::from_static(crate::pages::qr::CONTENT_SECURITY_POLICY),
        );
        response
    }

    /// Sends a WeChat navigation to the authorize page with a new state remembered in the
    /// state cookie: through the hash hop page (see [`pages::hop`]) when the browser may hold
    /// a `#fragment`, or with a plain 302 where the answer passes through a proxy that
    /// would take a page for a grant (forward-auth). Not rate-limited: a start costs a
    /// redirect, and whole districts share one address.
    fn begin<B>(
        &self,
        request: &Request<B>,
        return_url: ReturnUrl,
        scope: AuthScope,
        departure: Departure,
    ) -> Response<Body> {
        let headers = request.headers();
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, self.state_cookie.read(headers), now);
        let state = pending.begin(return_url, scope, now);
        self.metrics.started(scope.as_str());
        let location = self.authorize_location(scope, &state);
        let mut response = match departure {
            Departure::Hop => {
                let fragment = format!("/_wxgate/fragment?state={state}{}", self.app_param());
                pages::hop::render(&location, &fragment)
            }
            Departure::Redirect => redirect(&location),
        };
        let state_cookie = pending.to_cookie(&self.state_key, &self.state_cookie);
        set_cookie(&mut response, &state_cookie);
        response
    }

    fn authorize_location(&self, scope: AuthScope, state: &str) -> String {
        // WeChat checks the order of these parameters: appid, redirect_uri, response_type, scope, state.
        format!(
            "{}?appid={}&redirect_uri={}&response_type=code&scope={}&state={}&connect_redirect=1#wechat_redirect",
            self.authorize_url,
            utf8_percent_encode(&self.appid, URI_COMPONENT),
            utf8_percent_encode(&self.redirect_uri, URI_COMPONENT),
            scope.as_str(),
            state,
        )
    }

    /// `/_wxgate/fragment?state&hash`: the hop page's script reports the page's fragment;
    /// it joins the pending login in the state cookie and the browser goes on to authorize.
    /// The fragment only ever follows the return URL's `#`: it cannot change the origin.
    fn fragment<B>(&self, request: &Request<B>) -> Response<Body> {
        let headers = request.headers();
        let query = query_pairs(request.uri().query());
        let state = query.get("state").map_or("", String::as_str);
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, self.state_cookie.read(headers), now);
        let hash = query.get("hash").map_or("", String::as_str);
        let scope = is_well_formed_state(state)
            .then(|| pending.add_fragment(state, hash, now))
            .flatten();
        let Some(scope) = scope else {
            // No such login in this browser (cookies refused, or the page sat for ten
            // minutes): the callback could not finish it either.
            return self.expired_login_page();
        };
        let mut response = redirect(&self.authorize_location(scope, state));
        set_cookie(
            &mut response,
            &pending.to_cookie(&self.state_key, &self.state_cookie),
        );
        response
            .headers_mut()
            .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        response
    }

    /// A client that has had too many callbacks refused lately gets 429 until its bucket
    /// refills; `Some` is that answer.
    fn refused_too_often<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        let throttle = self.ledger.refusals.as_ref()?;
        let ip = client_ip(request);
        let wait = throttle.allows(ip).err()?;
        tracing::info!(client = %ip, "too many refused login callbacks");
        self.metrics.rate_limited("callback");
        Some(pages::respond(
            &pages::Failure::TooManyRequests(retry_after_secs(wait)),
            request.headers(),
        ))
    }

    /// Counts one refused callback against the client.
    fn count_refusal<B>(&self, request: &Request<B>) {
        if let Some(throttle) = &self.ledger.refusals {
            throttle.spend(client_ip(request));
        }
    }

    /// One call to WeChat's API from this appid's budget; `Some` is the 503 to answer with
    /// (before the code is spent: the same callback works once the budget refills).
    fn over_wechat_budget(&self) -> Option<Response<Body>> {
        let wait = self.ledger.wechat_budget(&self.appid)?.take().err()?;
        tracing::warn!("WeChat API budget of this appid spent (server.limits.wechat_rate)");
        self.metrics.rate_limited("wechat");
        let mut r = message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "登录人数过多",
            "Too many logins right now",
            "请稍后刷新此页面重试。",
            None,
        );
        if let Ok(v) = HeaderValue::from_str(&retry_after_secs(wait).to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        Some(r)
    }

    /// The gateway's own endpoints under `/_wxgate/`.
    pub async fn endpoint<B>(&self, path: &str, request: &Request<B>) -> Response<Body> {
        match path {
            callback if callback.starts_with("/_wxgate/callback") => self.callback(request).await,
            "/_wxgate/me" => self.me(request).await,
            "/_wxgate/logout" => self.logout(request).await,
            "/_wxgate/start" => self.start(request),
            "/_wxgate/fragment" => self.fragment(request),
            "/_wxgate/auth" => self.forward_auth(request).await,
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
        if let Some(limited) = self.refused_too_often(request) {
            return limited;
        }
        let Some(CallbackQuery { state, code }) = CallbackQuery::parse(request.uri().query())
        else {
            return self.refuse_callback(request, None).await;
        };
        let now = SystemTime::now();
        let mut pending =
            PendingLogins::from_cookie(&self.state_key, self.state_cookie.read(headers), now);
        let Some(entry) = pending.take(&state, now) else {
            return self
                .refuse_callback(request, Some((&state, code.as_deref())))
                .await;
        };
        // From here on the browser holds this state: one of its loads exchanges the code, the
        // others answer what that one did.
        let code = code.unwrap_or_default();
        // Before the claim: a callback turned away here is claimed when it is loaded again.
        if !code.is_empty() {
            if let Some(busy) = self.over_wechat_budget() {
                return busy;
            }
        }
        let shared = self.sessions.store().shared_values();
        let flights = &self.ledger.flights;
        let claim = flights
            .claim(
                shared,
                &self.flight_key,
                &state,
                &code,
                self.flight_patience,
            )
            .await;
        let mut response = match claim {
            Ok(Claim::First) => {
                let (response, outcome) = self.finish(request, &code, &entry).await;
                if let Err(e) = flights
                    .settle(shared, &self.flight_key, &state, &code, &outcome)
                    .await
                {
                    tracing::warn!(error = %e, "login outcome could not be recorded for a second load");
                }
                response
            }
            Ok(Claim::Settled(outcome)) => {
                self.metrics.repeated("settled");
                self.answer_again(&outcome, &entry)
            }
            Ok(Claim::Spent) => {
                self.metrics.repeated("spent");
                // This callback ran before and its outcome is gone: the page, which starts a
                // fresh login if it needs one. Never "expired" for a browser holding the state.
                let mut r = redirect(entry.return_url.as_str());
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Ok(Claim::Replayed) => return self.refuse_callback(request, None).await,
            Ok(Claim::Full) => {
                tracing::warn!("too many logins in flight to remember another used state");
                return pages::respond(&pages::Failure::Unavailable, headers);
            }
            Err(e) => {
                tracing::error!(error = %e, "login single flight unavailable: session store failed");
                return pages::respond(&pages::Failure::Unavailable, headers);
            }
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

    /// The callback of a pending login this browser holds: the session and a redirect to
    /// the page, or the page explaining why not; and the outcome for a second load.
    async fn finish<B>(
        &self,
        request: &Request<B>,
        code: &str,
        entry: &Pending,
    ) -> (Response<Body>, Outcome) {
        let headers = request.headers();
        let retry = Some(entry.return_url.as_str().to_owned());
        if code.is_empty() {
            self.metrics.failed("declined");
            let failure = flight::Failure::Declined;
            return (failure_page(failure, retry), Outcome::Failed(failure));
        }
        match self.complete(code, entry.scope).await {
            Ok(id) => {
                self.revoke_previous(headers).await;
                let outcome = Outcome::Landed {
                    cookie: id.cookie_value(),
                    url: entry.return_url.as_str().to_owned(),
                };
                (self.answer_again(&outcome, entry), outcome)
            }
            Err(e) => {
                tracing::warn!(error = %e, "login callback failed");
                self.metrics.failed(e.reason());
                let failure = e.failure();
                if failure == flight::Failure::BadCode {
                    self.count_refusal(request);
                }
                (failure_page(failure, retry), Outcome::Failed(failure))
            }
        }
    }

    /// What a load of a callback answers once the first load of it finished: the same
    /// redirect and session cookie, or the same failure.
    fn answer_again(&self, outcome: &Outcome, entry: &Pending) -> Response<Body> {
        match outcome {
            Outcome::Landed { cookie, url } => {
                let mut r = redirect(url);
                set_cookie(&mut r, &self.session_cookie(cookie.clone(), false));
                r
            }
            Outcome::Failed(failure) => {
                failure_page(*failure, Some(entry.return_url.as_str().to_owned()))
            }
        }
    }

    /// A callback this browser holds no pending login for. The second load of a finished
    /// callback by a browser that already has its session lands on its page; anything else
    /// (a forged, foreign or replayed state) is refused with a clear page, never a new
    /// redirect (no loop), and counted against the client.
    async fn refuse_callback<B>(
        &self,
        request: &Request<B>,
        callback: Option<(&str, Option<&str>)>,
    ) -> Response<Body> {
        let headers = request.headers();
        if let Some((state, code)) = callback {
            let shared = self.sessions.store().shared_values();
            let landed = self
                .ledger
                .flights
                .landed(shared, &self.flight_key, state, code.unwrap_or_default())
                .await;
            if let Ok(Some(Outcome::Landed { cookie, url })) = landed {
                let holds_it = cookies::read(headers, &self.cookie_name) == Some(cookie.as_str());
                if holds_it && matches!(self.session_of(headers).await, Ok(Some(_))) {
                    // The double load's later half, after the first cleared the state cookie.
                    self.metrics.repeated("settled");
                    let mut r = redirect(&url);
                    r.headers_mut()
                        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
                    return r;
                }
            }
        }
        self.count_refusal(request);
        self.metrics.failed("state");
        self.expired_login_page()
    }

    fn expired_login_page(&self) -> Response<Body> {
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
        let mut snapshot = grant.is_snapshotuser;
        let profile = if granted == AuthScope::UserInfo && scope == AuthScope::UserInfo && !snapshot
        {
            match self
                .wechat
                .userinfo(grant.access_token.expose(), &grant.openid)
                .await
            {
                Ok(info) => {
                    unionid = info.unionid.clone().or(unionid);
                    Some(profile_of(info))
                }
                // A 快照页 visitor's token may be refused userinfo (48001) without the grant
                // saying is_snapshotuser: a virtual account, not a failed login.
                Err(e) if e.kind() == ErrorKind::Unauthorized => {
                    snapshot = true;
                    None
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let login = NewSession {
            appid: self.appid.clone(),
            openid: grant.openid.clone(),
            unionid,
            scope: granted,
            snapshot,
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
        self.metrics.completed(granted.as_str());
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
            Ok(None) => self.login_required(request.headers(), Some(&home()), AuthScope::Base),
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
        let return_url = return_url_of(request.headers(), &query, &self.public_origin);
        // Only an explicit request opens the consent sheet: nobody is asked for their
        // profile by accident (WeChat answers needless consent with snapshot mode).
        let scope = match query.get("scope").map(String::as_str) {
            Some("snsapi_userinfo") => AuthScope::UserInfo,
            _ => AuthScope::Base,
        };
        // Through the hop: a proxy's 302 here kept the page's fragment (a `Location`
        // without one inherits it).
        match self.challenge(
            request,
            NonWeChat::Qrcode,
            scope,
            return_url,
            Departure::Hop,
        ) {
            Access::Respond(response) => *response,
            // Unreachable with Qrcode; a QR page of the home page is the safe answer.
            Access::Granted(_) | Access::Anonymous => self.qr_page(&home()),
        }
    }

    /// Forward-auth for nginx `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth`:
    /// 200 with the identity headers for a session of at least `?scope=` (default
    /// `snsapi_base`), else 401 JSON — or, with `?redirect=true` (Traefik, Caddy: they hand
    /// the answer to the browser), what a protected route would answer: a 302 to WeChat for
    /// a WeChat navigation, 401 JSON for scripts, the QR page for other browsers. The page
    /// to return to is `X-Forwarded-Uri` (or `rd`), checked like every return URL.
    async fn forward_auth<B>(&self, request: &Request<B>) -> Response<Body> {
        let query = query_pairs(request.uri().query());
        let required = match query.get("scope").map(String::as_str) {
            Some("snsapi_userinfo") => AuthScope::UserInfo,
            _ => AuthScope::Base,
        };
        let allow_snapshot = query.get("allow_snapshot").is_none_or(|v| v != "false");
        let session = match self.session_of(request.headers()).await {
            Ok(session) => session,
            Err(response) => return response,
        };
        let return_url = return_url_of(request.headers(), &query, &self.public_origin);
        let mut scope = required;
        if let Some((id, cached)) = &session {
            let s = &cached.session;
            let sufficient = s.scope.satisfies(required) && (allow_snapshot || !s.snapshot);
            if let (true, Some(Access::Respond(refused))) = (
                sufficient,
                refused(self.access.as_deref(), s, request.headers()),
            ) {
                return *refused;
            }
            if sufficient && !self.must_reauthorize(request, id, s) {
                return match self.grant(request, cached) {
                    Access::Granted(headers) => identity_response(headers),
                    Access::Respond(response) => *response,
                    Access::Anonymous => self.login_required(request.headers(), None, required),
                };
            }
            if sufficient {
                scope = s.scope;
            }
        }
        if query.get("redirect").is_some_and(|v| v == "true") {
            // A plain 302: Traefik and Caddy take any 2xx from here for a grant.
            if let Access::Respond(response) = self.challenge(
                request,
                NonWeChat::Qrcode,
                scope,
                return_url,
                Departure::Redirect,
            ) {
                return *response;
            }
            return self.login_required(request.headers(), None, scope);
        }
        self.login_required(request.headers(), Some(&return_url), scope)
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
        // Bound before the match: a future awaited in a match's scrutinee lives to the
        // match's end, and its bytes would sit beside the touch's in this future's state.
        let loaded = self.sessions.load(&key).await;
        match loaded {
            // A session of another Official Account under this one's cookie is no session.
            Ok(Some(cached)) if cached.session.appid != self.appid => Ok(None),
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
        let minted =
            cached.identity_or_mint(now, self.signer, |s| self.keys.mint(&self.claims(s, now)))?;
        let mut headers = vec![(self.identity_header.clone(), minted.value().clone())];
        if self.plain_headers {
            headers.extend(plain_headers(&self.claims(&cached.session, now)));
        } else if cached.session.snapshot {
            headers.push((SNAPSHOT_HEADER, HeaderValue::from_static("1")));
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
}

#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error(transparent)]
    WeChat(#[from] WeChatError),
    #[error("session store: {0}")]
    Store(crate::session::StoreError),
}

impl CallbackError {
    /// The `reason` label of `wxgate_logins_failed_total`.
    fn reason(&self) -> &'static str {
        match self {
            CallbackError::WeChat(e) => match e.kind() {
                ErrorKind::BadCode => "bad_code",
                ErrorKind::Unavailable => "wechat_unavailable",
                ErrorKind::Timeout => "wechat_timeout",
                _ => "wechat_error",
            },
            CallbackError::Store(_) => "store",
        }
    }

    /// The failure as the visitor's page (and a second load's) tells it.
    fn failure(&self) -> flight::Failure {
        use flight::Failure;
        match self {
            CallbackError::WeChat(e) => match e.kind() {
                ErrorKind::BadCode => Failure::BadCode,
                ErrorKind::Unavailable => Failure::WeChatUnavailable,
                ErrorKind::Timeout => Failure::WeChatTimeout,
                _ => Failure::WeChatError,
            },
            CallbackError::Store(_) => Failure::Store,
        }
    }
}

/// A failed callback as the visitor sees it: 4xx when the browser's code is bad or the
/// visitor declined, 502/503/504 when WeChat or the store is at fault, each with a retry
/// link and never a redirect.
fn failure_page(failure: flight::Failure, retry: Option<String>) -> Response<Body> {
    use flight::Failure;
    let (status, zh, en, detail) = match failure {
        Failure::Declined => (
            StatusCode::FORBIDDEN,
            "你已拒绝授权",
            "Authorization declined",
            "需要你的授权才能继续访问此页面。",
        ),
        Failure::BadCode => (
            StatusCode::BAD_REQUEST,
            "登录已失效",
            "Login expired",
            "授权码已失效或已被使用，请重试。",
        ),
        Failure::WeChatTimeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "微信响应超时",
            "WeChat timed out",
            "微信服务器响应超时，请稍后重试。",
        ),
        Failure::WeChatUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "微信服务繁忙",
            "WeChat is busy",
            "微信服务器繁忙，请稍后重试。",
        ),
        Failure::WeChatError => (
            StatusCode::BAD_GATEWAY,
            "登录失败",
            "Login failed",
            "与微信通信失败，请稍后重试。",
        ),
        Failure::Store => (
            StatusCode::SERVICE_UNAVAILABLE,
            "服务繁忙",
            "Service unavailable",
            "会话存储暂时不可用，请稍后重试。",
        ),
    };
    message_page(status, zh, en, detail, retry)
}

/// The refusal of a logged-in visitor that `rule` does not admit.
fn refused(rule: Option<&AccessRule>, session: &Session, headers: &HeaderMap) -> Option<Access> {
    let rule = rule?;
    if rule.admits(&session.openid, session.unionid.as_deref()) {
        return None;
    }
    tracing::info!("visitor not on the access list refused");
    Some(Access::respond(access::refusal(
        &session.openid,
        pages::wants_json(headers),
    )))
}

/// The client a request came from, as the gate resolved it. The gate always sets it;
/// without it every caller shares the unspecified address.
fn client_ip<B>(request: &Request<B>) -> std::net::IpAddr {
    request
        .extensions()
        .get::<ClientIp>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0)
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

/// A fingerprint of what a minted identity depends on: the signing key and the claims'
/// envelope. HS256 keys share a kid scheme with their secret, so the secret's hash counts too.
fn signer_of(identity: &crate::config::IdentityConfig, keys: &KeySet) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(keys.signing_kid().as_bytes())
        .chain_update([0])
        .chain_update(identity.secret.expose().as_bytes())
        .chain_update([0])
        .chain_update(identity.issuer.as_bytes())
        .chain_update([0])
        .chain_update(identity.audience.as_bytes())
        .chain_update(identity.ttl.as_millis().to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The configured store behind its metrics and hot-path cache.
pub fn open_sessions(
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<SessionCache>, LoginSetupError> {
    let store = crate::session::open_store(&config.session)?;
    let store: Arc<dyn SessionStore> = Arc::new(MeteredStore::new(store, metrics.store.clone()));
    let sessions = Arc::new(SessionCache::new(
        store,
        crate::session::cache_settings(&config.session),
        crate::session::lifetimes(&config.session),
    ));
    sample_session_count(&sessions, metrics.login.clone());
    Ok(sessions)
}

/// Keeps `wxgate_sessions_active` current: a count at start, then every 15 seconds for as
/// long as the sessions live (the task holds only a weak reference).
fn sample_session_count(sessions: &Arc<SessionCache>, metrics: LoginMetrics) {
    const EVERY: Duration = Duration::from_secs(15);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let sessions = Arc::downgrade(sessions);
    runtime.spawn(async move {
        loop {
            let Some(live) = sessions.upgrade() else {
                return;
            };
            match live.store().count().await {
                Ok(count) => metrics.set_sessions_active(count),
                Err(e) => tracing::debug!(error = %e, "session count unavailable"),
            }
            drop(live);
            tokio::time::sleep(EVERY).await;
        }
    });
}

/// The `name=value` pairs of a `Cookie` header, trimmed, empty ones skipped.
fn cookie_pairs(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// Removes the cookies named `names` from every `Cookie` header, dropping headers left empty.
/// Headers that name none of them are left as they are, without an allocation.
fn remove_cookies(headers: &mut HeaderMap, names: [&str; 2]) {
    // Bytes, not text: a cookie value may hold obs-text, which must reach the upstream as
    // it came. Names are compared trimmed, as `cookies::read` reads them.
    let ours = |pair: &[u8]| {
        let name = pair
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(pair)
            .trim_ascii();
        names.iter().any(|n| name == n.as_bytes())
    };
    let (mut any_ours, mut only_ours) = (false, true);
    for pair in headers.get_all(COOKIE).iter().flat_map(cookie_pairs) {
        match ours(pair) {
            true => any_ours = true,
            false => only_ours = false,
        }
    }
    if !any_ours {
        return;
    }
    if only_ours {
        // A page that keeps no cookies of its own: the header goes whole, nothing is rebuilt.
        headers.remove(COOKIE);
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            if !cookie_pairs(value).any(ours) {
                return Some(value.clone());
            }
            let rest: Vec<&[u8]> = cookie_pairs(value).filter(|pair| !ours(pair)).collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).ok())
                .flatten()
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

/// The page a protected request asked for, to return to after login.
fn requested_page<B>(request: &Request<B>) -> ReturnUrl {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    ReturnUrl::from_request_target(target).unwrap_or_else(|_| home())
}

fn home() -> ReturnUrl {
    match ReturnUrl::from_request_target("/") {
        Ok(url) => url,
        Err(e) => unreachable!("\"/\" is a valid return URL: {e}"),
    }
}

/// Where a login started at `/_wxgate/start` or `/_wxgate/auth` returns to: the `rd`
/// parameter, else the `X-Forwarded-Uri` a proxy in front set, else the home page. Anything
/// off-site or malformed means the home page.
fn return_url_of(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    public_origin: &url::Url,
) -> ReturnUrl {
    if let Some(rd) = query.get("rd") {
        return ReturnUrl::from_rd(rd, public_origin, &[]).unwrap_or_else(|_| home());
    }
    headers
        .get("x-forwarded-uri")
        .and_then(|v| v.to_str().ok())
        .and_then(|uri| ReturnUrl::from_request_target(uri).ok())
        .unwrap_or_else(home)
}

/// A forward-auth 200: no body, the identity in the headers for the proxy to pass on.
fn identity_response(headers: Vec<(HeaderName, HeaderValue)>) -> Response<Body> {
    let mut response = Response::new(crate::body::empty());
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(COOKIE, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn values(headers: &HeaderMap) -> Vec<Vec<u8>> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    const OURS: [&str; 2] = ["wxgate_session", "wxgate_state"];

    #[test]
    fn the_gateways_cookies_go_and_every_other_byte_stays() {
        let mut h = cookies(&[
            b"a=1; wxgate_session=secret; b=\xe4\xb8\xad",
            b"wxgate_state = s1 ;wxgate_session=again",
            b"c=3",
        ]);
        remove_cookies(&mut h, OURS);
        assert_eq!(
            values(&h),
            [b"a=1; b=\xe4\xb8\xad".to_vec(), b"c=3".to_vec()],
            "obs-text kept as sent, emptied headers dropped, order kept"
        );
    }

    #[test]
    fn a_cookie_header_of_the_gateways_cookies_alone_goes_whole() {
        let mut h = cookies(&[b"wxgate_session=secret", b" ; wxgate_state=s1;"]);
        remove_cookies(&mut h, OURS);
        assert!(!h.contains_key(COOKIE), "{h:?}");
    }

    #[test]
    fn headers_without_the_gateways_cookies_are_untouched() {
        let raw: &[u8] = b"x=1;  wxgate_sessionx=2 ; y";
        let mut h = cookies(&[raw]);
        remove_cookies(&mut h, OURS);
        assert_eq!(values(&h), [raw.to_vec()]);
    }
}
