//! WeChat's redirect back (`/_wxgate/callback`): the checks before anything reaches WeChat's
//! API, the callback's single flight (a webview loads it twice, at once), the code
//! exchange, the new session and its cookie, and the answers to loads that come again.

use std::time::SystemTime;

use cookie::Cookie;
use http::{HeaderMap, Request};

use crate::login::authorize::stale_login;
use crate::login::decision::{Answer, Refusal, Reply};
use crate::login::flight::{self, Claim, Outcome};
use crate::login::is_well_formed_state;
use crate::login::refresh::profile_of;
use crate::login::{AuthScope, Login, Pending, PendingLogins, Visitor, cookies};
use crate::session::{Lifetimes, NewSession, SessionId, WeChatToken, WeChatTokens};
use crate::wechat::{ErrorKind, WeChatError};

impl Login {
    /// WeChat's redirect back. In this order, so that nothing unverified reaches WeChat's
    /// API: method, rate, one well-formed `state`, the state cookie holding it, not used
    /// before; only then is the `code` exchanged.
    pub(super) async fn callback<B>(&self, visitor: &Visitor<'_>, request: &Request<B>) -> Answer {
        if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            return Refusal::CallbackMethod.into();
        }
        if let Some(limited) = self.refused_too_often(visitor) {
            return limited.into();
        }
        let Some(CallbackQuery { state, code }) = CallbackQuery::parse(request.uri().query())
        else {
            return self.refuse_callback(visitor, request, None).await;
        };
        let now = SystemTime::now();
        let key = &self.shared.state_key;
        let mut pending =
            PendingLogins::from_cookie(key, self.state_cookie.read(request.headers()), now);
        let Some(entry) = pending.take(&state, now) else {
            return self
                .refuse_callback(visitor, request, Some((&state, code.as_deref())))
                .await;
        };
        // From here on the browser holds this state: one of its loads exchanges the code, the
        // others answer what that one did.
        let code = code.unwrap_or_default();
        // Before the claim: a callback turned away here is claimed when it is loaded again.
        if !code.is_empty() {
            if let Some(busy) = self.over_wechat_budget() {
                return busy.into();
            }
        }
        let shared = self.shared.sessions.store().shared_values();
        let flights = &self.shared.ledger.flights;
        let flight_key = &self.shared.flight_key;
        let claim = flights
            .claim(shared, flight_key, &state, &code, self.flight_patience)
            .await;
        let answer = match claim {
            Ok(Claim::First) => {
                let (answer, outcome) =
                    self.finish(visitor, request.headers(), &code, &entry).await;
                if let Err(e) = flights
                    .settle(shared, flight_key, &state, &code, &outcome)
                    .await
                {
                    tracing::warn!(error = %e, "login outcome could not be recorded for a second load");
                }
                answer
            }
            Ok(Claim::Settled(outcome)) => {
                self.shared.metrics.repeated("settled");
                self.answer_again(&outcome, &entry)
            }
            Ok(Claim::Spent) => {
                self.shared.metrics.repeated("spent");
                // This callback ran before and its outcome is gone: the page, which starts a
                // fresh login if it needs one. Never "expired" for a browser holding the state.
                Reply::Redirect {
                    location: entry.return_url.as_str().to_owned(),
                }
                .into()
            }
            Ok(Claim::Replayed) => return self.refuse_callback(visitor, request, None).await,
            Ok(Claim::Full) => {
                tracing::warn!("too many logins in flight to remember another used state");
                return Refusal::Unavailable.into();
            }
            Err(e) => {
                tracing::error!(error = %e, "login single flight unavailable: session store failed");
                return Refusal::Unavailable.into();
            }
        };
        answer
            .with_cookie(pending.to_cookie(key, &self.state_cookie))
            .without_referrer()
    }

    /// A client that has had too many callbacks refused lately is refused until its bucket
    /// refills.
    fn refused_too_often(&self, visitor: &Visitor<'_>) -> Option<Refusal> {
        let throttle = self.shared.ledger.refusals.as_ref()?;
        let wait = throttle.allows(visitor.ip).err()?;
        tracing::info!(client = %visitor.ip, "too many refused login callbacks");
        self.shared.metrics.rate_limited("callback");
        Some(Refusal::TooManyRefused(wait))
    }

    /// Counts one refused callback against the client.
    fn count_refusal(&self, visitor: &Visitor<'_>) {
        if let Some(throttle) = &self.shared.ledger.refusals {
            throttle.spend(visitor.ip);
        }
    }

    /// One call to WeChat's API from this appid's budget; `Some` is the refusal to answer
    /// with (before the code is spent: the same callback works once the budget refills).
    fn over_wechat_budget(&self) -> Option<Refusal> {
        let wait = self
            .shared
            .ledger
            .wechat_budget(&self.appid)?
            .take()
            .err()?;
        tracing::warn!("WeChat API budget of this appid spent (server.limits.wechat_rate)");
        self.shared.metrics.rate_limited("wechat");
        Some(Refusal::WeChatBudget(wait))
    }

    /// The callback of a pending login this browser holds: the session and a redirect to
    /// the page, or the page explaining why not; and the outcome for a second load.
    async fn finish(
        &self,
        visitor: &Visitor<'_>,
        headers: &HeaderMap,
        code: &str,
        entry: &Pending,
    ) -> (Answer, Outcome) {
        let failed = |failure| {
            let refusal = Refusal::Callback {
                failure,
                retry: entry.return_url.as_str().to_owned(),
            };
            (refusal.into(), Outcome::Failed(failure))
        };
        if code.is_empty() {
            self.shared.metrics.failed("declined");
            return failed(flight::Failure::Declined);
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
                self.shared.metrics.failed(e.reason());
                let failure = e.failure();
                if failure == flight::Failure::BadCode {
                    self.count_refusal(visitor);
                }
                failed(failure)
            }
        }
    }

    /// What a load of a callback answers once the first load of it finished: the same
    /// redirect and session cookie, or the same failure.
    fn answer_again(&self, outcome: &Outcome, entry: &Pending) -> Answer {
        match outcome {
            Outcome::Landed { cookie, url } => Answer::from(Reply::Redirect {
                location: url.clone(),
            })
            .with_cookie(self.session_cookie(cookie.clone())),
            Outcome::Failed(failure) => Refusal::Callback {
                failure: *failure,
                retry: entry.return_url.as_str().to_owned(),
            }
            .into(),
        }
    }

    /// A callback this browser holds no pending login for. The second load of a finished
    /// callback by a browser that already has its session lands on its page; anything else
    /// (a forged, foreign or replayed state) is refused with a clear page, never a new
    /// redirect (no loop), and counted against the client.
    async fn refuse_callback<B>(
        &self,
        visitor: &Visitor<'_>,
        request: &Request<B>,
        callback: Option<(&str, Option<&str>)>,
    ) -> Answer {
        let headers = request.headers();
        if let Some((state, code)) = callback {
            let shared = self.shared.sessions.store().shared_values();
            let landed = self
                .shared
                .ledger
                .flights
                .landed(
                    shared,
                    &self.shared.flight_key,
                    state,
                    code.unwrap_or_default(),
                )
                .await;
            if let Ok(Some(Outcome::Landed { cookie, url })) = landed {
                let holds_it =
                    cookies::read(headers, self.session_cookie.name()) == Some(cookie.as_str());
                if holds_it && matches!(self.session_of(headers).await, Ok(Some(_))) {
                    // The double load's later half, after the first cleared the state cookie.
                    self.shared.metrics.repeated("settled");
                    return Answer::from(Reply::Redirect { location: url }).without_referrer();
                }
            }
        }
        self.count_refusal(visitor);
        self.shared.metrics.failed("state");
        stale_login()
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
            .shared
            .sessions
            .create(login)
            .await
            .map_err(CallbackError::Store)?;
        self.shared.metrics.completed(granted.as_str());
        Ok(id)
    }

    /// A new login replaces the session the browser held: that one is revoked, so a copy of
    /// the old cookie (or one planted before the login) is worth nothing afterwards.
    async fn revoke_previous(&self, headers: &HeaderMap) {
        let Some(old) =
            cookies::read(headers, self.session_cookie.name()).and_then(SessionId::from_cookie)
        else {
            return;
        };
        if let Err(e) = self.shared.sessions.delete(&old.storage_key()).await {
            tracing::warn!(error = %e, "previous session could not be revoked");
        }
    }

    /// The session cookie (`__Host-` prefixed when secure without a domain), living as long
    /// as a session may.
    fn session_cookie(&self, value: String) -> Cookie<'static> {
        let mut c = self.session_cookie.build(value);
        let ttl = self.shared.sessions.lifetimes().ttl.as_secs();
        c.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(ttl).unwrap_or(i64::MAX),
        ));
        c
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
