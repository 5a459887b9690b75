//! Who passes a protected route: the session the cookie names, the route's scope, its
//! snapshot and access rules, and what a visitor without a sufficient session gets instead
//! (WeChat's authorize page, a 401 for scripts, the route's `non_wechat` answer).

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Request};

use crate::access::AccessRule;
use crate::config::{NonWeChat, Scope};
use crate::login::authorize::{Departure, requested_page};
use crate::login::decision::{Decision, Refusal};
use crate::login::refresh::{Freshness, freshness};
use crate::login::{AuthScope, Login, ReturnUrl, Visitor, cookies};
use crate::route::Route;
use crate::session::{CachedSession, Session, SessionId};

impl Login {
    /// Decides a request on a protected route: identity, a login, or a refusal.
    pub async fn authenticate<B>(
        &self,
        visitor: &Visitor<'_>,
        request: &Request<B>,
        route: &Route,
    ) -> Decision {
        let required = match route.scope {
            Scope::Public => return Decision::Anonymous,
            Scope::SnsapiBase => AuthScope::Base,
            Scope::SnsapiUserinfo => AuthScope::UserInfo,
        };
        let session = match self.session_of(request.headers()).await {
            Ok(session) => session,
            Err(refusal) => return Decision::answer(refusal),
        };
        if let Some((id, cached)) = &session {
            let s = &cached.session;
            if s.snapshot && !route.allow_snapshot {
                return Decision::answer(Refusal::Snapshot);
            }
            if s.scope.satisfies(required) {
                // Checked once the session is what the route asks for: a login upgraded to
                // snsapi_userinfo may bring the unionid a list names.
                if let Some(refused) = refused(route.access.as_deref(), s) {
                    return Decision::answer(refused);
                }
                if self.must_reauthorize(visitor, id, s) {
                    // Ask again for what the session had, never less.
                    return self.challenge(
                        visitor,
                        request.headers(),
                        route.non_wechat,
                        s.scope,
                        requested_page(request),
                        Departure::Hop,
                    );
                }
                return self.grant(cached);
            }
        }
        match self.challenge(
            visitor,
            request.headers(),
            route.non_wechat,
            required,
            requested_page(request),
            Departure::Hop,
        ) {
            // A list admits people WeChat named; an anonymous visitor is none of them.
            Decision::Anonymous if route.access.is_some() => Decision::answer(Refusal::Unnamed),
            decision => decision,
        }
    }

    pub(super) fn grant(&self, cached: &CachedSession) -> Decision {
        match self.shared.issuer.headers(cached, SystemTime::now()) {
            Ok(headers) => Decision::Grant(headers),
            Err(e) => {
                tracing::error!(error = %e, "identity token could not be signed");
                Decision::answer(Refusal::Unavailable)
            }
        }
    }

    /// Looks after the profile of a session about to be served: a stale one is refreshed in
    /// the background; one WeChat will no longer refresh sends a navigation back through
    /// authorize (scripts keep the identity they have: a redirect cannot help them).
    pub(super) fn must_reauthorize(
        &self,
        visitor: &Visitor<'_>,
        id: &SessionId,
        session: &Session,
    ) -> bool {
        match freshness(session, SystemTime::now(), self.shared.profile_refresh) {
            Freshness::Fresh => false,
            Freshness::Refreshable => {
                self.refresher.spawn(id.storage_key(), session.clone());
                false
            }
            Freshness::Reauthorize => {
                self.shared.browsers.is_wechat(visitor) && !visitor.wants_json
            }
        }
    }

    /// No sufficient session: WeChat browsers go to authorize, scripts get 401 JSON,
    /// other browsers get the route's `non_wechat` behaviour.
    pub(super) fn challenge(
        &self,
        visitor: &Visitor<'_>,
        headers: &HeaderMap,
        non_wechat: NonWeChat,
        scope: AuthScope,
        return_url: ReturnUrl,
        departure: Departure,
    ) -> Decision {
        if visitor.wants_json {
            return Decision::answer(self.login_required(headers, None, scope));
        }
        if !self.shared.browsers.is_wechat(visitor) {
            return match non_wechat {
                NonWeChat::Anonymous => Decision::Anonymous,
                NonWeChat::Deny => Decision::answer(Refusal::NotWeChat),
                NonWeChat::Qrcode => Decision::answer(self.open_in_wechat(&return_url)),
            };
        }
        Decision::answer(self.begin(headers, return_url, scope, departure))
    }

    /// The live session the request's cookie names, if any; a store failure refuses.
    pub(super) async fn session_of(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(SessionId, Arc<CachedSession>)>, Refusal> {
        let Some(id) =
            cookies::read(headers, self.session_cookie.name()).and_then(SessionId::from_cookie)
        else {
            return Ok(None);
        };
        let key = id.storage_key();
        let sessions = &self.shared.sessions;
        // Bound before the match: a future awaited in a match's scrutinee lives to the
        // match's end, and its bytes would sit beside the touch's in this future's state.
        let loaded = sessions.load(&key).await;
        match loaded {
            // A session of another Official Account under this one's cookie is no session.
            Ok(Some(cached)) if cached.session.appid != self.appid => Ok(None),
            Ok(Some(cached)) => {
                if let Err(e) = sessions.touch(&key, &cached).await {
                    tracing::warn!(error = %e, "session last-seen could not be written");
                }
                Ok(Some((id, cached)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "session store failed");
                Err(Refusal::Unavailable)
            }
        }
    }
}

/// The refusal of a logged-in visitor that `rule` does not admit.
pub(super) fn refused(rule: Option<&AccessRule>, session: &Session) -> Option<Refusal> {
    let rule = rule?;
    if rule.admits(&session.openid, session.unionid.as_deref()) {
        return None;
    }
    tracing::info!("visitor not on the access list refused");
    Some(Refusal::NotAdmitted {
        openid: session.openid.clone(),
    })
}
