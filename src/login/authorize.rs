//! The way to WeChat's authorize page: a new state in the pending-login cookie, the
//! authorize URL, the hash hop that keeps the page's `#fragment` (`/_wxgate/fragment`), the
//! login a script or a proxy starts (`/_wxgate/start`), and the answers that point there
//! (the 401 for scripts, the "open in WeChat" page).

use std::collections::HashMap;
use std::time::SystemTime;

use http::header::REFERER;
use http::{HeaderMap, Request};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::NonWeChat;
use crate::login::decision::{Answer, Decision, Refusal, Reply};
use crate::login::{AuthScope, Login, PendingLogins, ReturnUrl, Visitor, is_well_formed_state};

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

/// How a WeChat navigation leaves for the authorize page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Departure {
    /// Through the hash hop page, which reports the page's `#fragment` first.
    Hop,
    /// A plain 302 (the fragment, if any, is lost).
    Redirect,
}

impl Login {
    /// 401 JSON for scripts, with the login URL a page's script can send the visitor to:
    /// back to `page` if given, else to the page the script runs on (its Referer), asking
    /// for `scope` and no more (a consent sheet nobody needed invites snapshot mode).
    pub(super) fn login_required(
        &self,
        headers: &HeaderMap,
        page: Option<&ReturnUrl>,
        scope: AuthScope,
    ) -> Answer {
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
        Reply::LoginRequired { login_url }.into()
    }

    /// The page for other browsers: a QR code of the page, to open in WeChat.
    pub(super) fn open_in_wechat(&self, return_url: &ReturnUrl) -> Answer {
        let target = return_url.as_str();
        let page = if target.starts_with('/') {
            format!(
                "{}{}",
                self.public_origin.as_str().trim_end_matches('/'),
                target
            )
        } else {
            target.to_owned()
        };
        Reply::OpenInWeChat { page }.into()
    }

    /// Sends a WeChat navigation to the authorize page with a new state remembered in the
    /// state cookie: through the hash hop page (see `pages::hop`) when the browser may hold
    /// a `#fragment`, or with a plain 302 where the answer passes through a proxy that
    /// would take a page for a grant (forward-auth). Not rate-limited: a start costs a
    /// redirect, and whole districts share one address.
    pub(super) fn begin(
        &self,
        headers: &HeaderMap,
        return_url: ReturnUrl,
        scope: AuthScope,
        departure: Departure,
    ) -> Answer {
        let now = SystemTime::now();
        let key = &self.shared.state_key;
        let mut pending = PendingLogins::from_cookie(key, self.state_cookie.read(headers), now);
        let state = pending.begin(return_url, scope, now);
        self.shared.metrics.started(scope.as_str());
        let fragment_report = match departure {
            Departure::Hop => Some(format!(
                "/_wxgate/fragment?state={state}{}",
                self.app_param()
            )),
            Departure::Redirect => None,
        };
        let reply = Reply::Authorize {
            location: self.authorize_location(scope, &state),
            fragment_report,
        };
        Answer::from(reply).with_cookie(pending.to_cookie(key, &self.state_cookie))
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
    pub(super) fn fragment<B>(&self, request: &Request<B>) -> Answer {
        let query = query_pairs(request.uri().query());
        let state = query.get("state").map_or("", String::as_str);
        let now = SystemTime::now();
        let key = &self.shared.state_key;
        let mut pending =
            PendingLogins::from_cookie(key, self.state_cookie.read(request.headers()), now);
        let hash = query.get("hash").map_or("", String::as_str);
        let scope = is_well_formed_state(state)
            .then(|| pending.add_fragment(state, hash, now))
            .flatten();
        let Some(scope) = scope else {
            // No such login in this browser (cookies refused, or the page sat for ten
            // minutes): the callback could not finish it either.
            return stale_login();
        };
        let location = self.authorize_location(scope, state);
        Answer::from(Reply::Redirect { location })
            .with_cookie(pending.to_cookie(key, &self.state_cookie))
            .without_referrer()
    }

    /// `/_wxgate/start`: begins a login for a same-site `rd` (what a forward-auth 401 or an
    /// XHR client uses).
    pub(super) fn start<B>(&self, visitor: &Visitor<'_>, request: &Request<B>) -> Answer {
        let query = query_pairs(request.uri().query());
        let return_url = return_url_of(request.headers(), &query, &self.public_origin);
        // Only an explicit request opens the consent sheet: nobody is asked for their
        // profile by accident (WeChat answers needless consent with snapshot mode).
        let scope = requested_scope(&query);
        // Through the hop: a proxy's 302 here kept the page's fragment (a `Location`
        // without one inherits it).
        match self.challenge(
            visitor,
            request.headers(),
            NonWeChat::Qrcode,
            scope,
            return_url,
            Departure::Hop,
        ) {
            Decision::Answer(answer) => *answer,
            // Unreachable with Qrcode; a QR page of the home page is the safe answer.
            Decision::Grant(_) | Decision::Anonymous => self.open_in_wechat(&home()),
        }
    }
}

/// A login link this browser holds no pending login for: a clear page, never a new
/// redirect (no loop).
pub(super) fn stale_login() -> Answer {
    Answer::from(Refusal::StaleLogin).without_referrer()
}

/// `?scope=snsapi_userinfo` asks for the profile; anything else for snsapi_base.
pub(super) fn requested_scope(query: &HashMap<String, String>) -> AuthScope {
    match query.get("scope").map(String::as_str) {
        Some("snsapi_userinfo") => AuthScope::UserInfo,
        _ => AuthScope::Base,
    }
}

/// The page a protected request asked for, to return to after login.
pub(super) fn requested_page<B>(request: &Request<B>) -> ReturnUrl {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    ReturnUrl::from_request_target(target).unwrap_or_else(|_| home())
}

pub(super) fn home() -> ReturnUrl {
    match ReturnUrl::from_request_target("/") {
        Ok(url) => url,
        Err(e) => unreachable!("\"/\" is a valid return URL: {e}"),
    }
}

/// Where a login started at `/_wxgate/start` or `/_wxgate/auth` returns to: the `rd`
/// parameter, else the `X-Forwarded-Uri` a trusted proxy in front set (the gate keeps it
/// only from trusted proxies, and only for `/_wxgate/`), else the home page. Anything
/// off-site or malformed means the home page.
pub(super) fn return_url_of(
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

pub(super) fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
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
