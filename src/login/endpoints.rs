//! The gateway's own endpoints under `/_wxgate/`: the callback and the hop's fragment report
//! (in `callback` and `authorize`), and here `me`, `logout`, forward-auth (`auth`) and the
//! public keys (`jwks.json`).

use std::time::SystemTime;

use http::Request;

use crate::config::NonWeChat;
use crate::login::authorize::{Departure, home, query_pairs, requested_scope, return_url_of};
use crate::login::decision::{Answer, Decision, Refusal, Reply};
use crate::login::policy::refused;
use crate::login::{AuthScope, Login, ReturnUrl, Visitor, cookies};
use crate::session::SessionId;

impl Login {
    /// Answers a request for one of the gateway's own endpoints.
    pub async fn endpoint<B>(
        &self,
        path: &str,
        visitor: &Visitor<'_>,
        request: &Request<B>,
    ) -> Answer {
        match path {
            callback if callback.starts_with("/_wxgate/callback") => {
                self.callback(visitor, request).await
            }
            "/_wxgate/me" => self.me(request).await,
            "/_wxgate/logout" => self.logout(request).await,
            "/_wxgate/start" => self.start(visitor, request),
            "/_wxgate/fragment" => self.fragment(request),
            "/_wxgate/auth" => self.forward_auth(visitor, request).await,
            "/_wxgate/jwks.json" => Reply::Jwks(self.shared.issuer.jwks().clone()).into(),
            _ => Refusal::NoEndpoint.into(),
        }
    }

    /// `/_wxgate/me`: the visitor's facts as the identity JWT carries them, or 401.
    async fn me<B>(&self, request: &Request<B>) -> Answer {
        match self.session_of(request.headers()).await {
            Ok(Some((_, cached))) => {
                let claims = self
                    .shared
                    .issuer
                    .claims(&cached.session, SystemTime::now());
                let mut me = serde_json::to_value(&claims).unwrap_or_default();
                if let Some(fields) = me.as_object_mut() {
                    // The visitor's facts, not a token's envelope.
                    for envelope in ["iss", "aud", "iat", "exp", "jti"] {
                        fields.remove(envelope);
                    }
                }
                Reply::Me(me).into()
            }
            Ok(None) => self.login_required(request.headers(), Some(&home()), AuthScope::Base),
            Err(refusal) => refusal.into(),
        }
    }

    /// `/_wxgate/logout?rd=`: the session deleted, its cookie removed, back to a same-site page.
    async fn logout<B>(&self, request: &Request<B>) -> Answer {
        let id = cookies::read(request.headers(), self.session_cookie.name())
            .and_then(SessionId::from_cookie);
        if let Some(id) = id {
            if let Err(e) = self.shared.sessions.delete(&id.storage_key()).await {
                tracing::warn!(error = %e, "session could not be deleted from the store");
            }
        }
        let query = query_pairs(request.uri().query());
        let location = query
            .get("rd")
            .and_then(|rd| ReturnUrl::from_rd(rd, &self.public_origin, &[]).ok())
            .map_or_else(|| "/".to_owned(), ReturnUrl::into_string);
        Answer::from(Reply::Redirect { location }).with_cookie(self.session_cookie.removal())
    }

    /// Forward-auth for nginx `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth`:
    /// 200 with the identity headers for a session of at least `?scope=` (default
    /// `snsapi_base`), else 401 JSON — or, with `?redirect=true` (Traefik, Caddy: they hand
    /// the answer to the browser), what a protected route would answer: a 302 to WeChat for
    /// a WeChat navigation, 401 JSON for scripts, the QR page for other browsers. The page
    /// to return to is `X-Forwarded-Uri` (or `rd`), checked like every return URL.
    async fn forward_auth<B>(&self, visitor: &Visitor<'_>, request: &Request<B>) -> Answer {
        let headers = request.headers();
        let query = query_pairs(request.uri().query());
        let required = requested_scope(&query);
        let allow_snapshot = query.get("allow_snapshot").is_none_or(|v| v != "false");
        let session = match self.session_of(headers).await {
            Ok(session) => session,
            Err(refusal) => return refusal.into(),
        };
        let return_url = return_url_of(headers, &query, &self.public_origin);
        let mut scope = required;
        if let Some((id, cached)) = &session {
            let s = &cached.session;
            let sufficient = s.scope.satisfies(required) && (allow_snapshot || !s.snapshot);
            if sufficient {
                if let Some(refusal) = refused(self.access.as_deref(), s) {
                    return refusal.into();
                }
                if !self.must_reauthorize(visitor, id, s) {
                    return match self.grant(cached) {
                        Decision::Grant(identity) => Reply::Identity(identity).into(),
                        Decision::Answer(answer) => *answer,
                        Decision::Anonymous => self.login_required(headers, None, required),
                    };
                }
                scope = s.scope;
            }
        }
        if query.get("redirect").is_some_and(|v| v == "true") {
            // A plain 302: Traefik and Caddy take any 2xx from here for a grant.
            if let Decision::Answer(answer) = self.challenge(
                visitor,
                headers,
                NonWeChat::Qrcode,
                scope,
                return_url,
                Departure::Redirect,
            ) {
                return *answer;
            }
            return self.login_required(headers, None, scope);
        }
        self.login_required(headers, Some(&return_url), scope)
    }
}
