//! What the login decides, as data: the gate forwards a [`Decision::Grant`] or
//! [`Decision::Anonymous`], and `pages::answer` renders every [`Answer`]. No part of the
//! login builds a response itself, so every answer the gateway makes carries the same
//! security headers and follows the same JSON-or-page rule.

use std::time::Duration;

use bytes::Bytes;
use cookie::Cookie;
use http::{HeaderName, HeaderValue};

use crate::login::flight;

/// The identity headers a granted request goes upstream with.
pub type Identity = Vec<(HeaderName, HeaderValue)>;

/// A request on a protected route, decided.
pub enum Decision {
    /// Forward it with these identity headers.
    Grant(Identity),
    /// Forward it without identity (`non_wechat = "anonymous"`).
    Anonymous,
    /// Answer it here. Boxed: the other variants, one of which nearly every request gets,
    /// stay small.
    Answer(Box<Answer>),
}

impl Decision {
    pub fn answer(answer: impl Into<Answer>) -> Self {
        Decision::Answer(Box::new(answer.into()))
    }
}

/// What the gateway answers itself, with the cookies it sets on the way.
pub struct Answer {
    pub reply: Reply,
    /// `Set-Cookie`s, in order.
    pub cookies: Vec<Cookie<'static>>,
    /// The answer's URL carries a login's state: no `Referer` may take it elsewhere.
    pub no_referrer: bool,
}

impl Answer {
    pub fn with_cookie(mut self, cookie: Cookie<'static>) -> Self {
        self.cookies.push(cookie);
        self
    }

    pub fn without_referrer(mut self) -> Self {
        self.no_referrer = true;
        self
    }
}

/// The answer itself.
#[derive(Debug)]
pub enum Reply {
    /// Off to WeChat's authorize page (`location`): through the hash hop page, whose script
    /// first reports the page's `#fragment` to `fragment_report`, or with a plain 302 when
    /// `fragment_report` is `None` (forward-auth, where a page would pass for a grant).
    Authorize {
        location: String,
        fragment_report: Option<String>,
    },
    /// 401 JSON for a script, naming the URL that starts a login.
    LoginRequired { login_url: String },
    /// The "open this page in WeChat" page, with a QR code of `page` (an absolute URL).
    OpenInWeChat { page: String },
    /// A 302 to a page of the site.
    Redirect { location: String },
    /// Forward-auth's 200: no body, the identity in the headers.
    Identity(Identity),
    /// `/_wxgate/me`: the visitor's facts.
    Me(serde_json::Value),
    /// `/_wxgate/jwks.json`.
    Jwks(Bytes),
    /// Refused or failed.
    Refuse(Refusal),
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Answer {
            reply,
            cookies: Vec::new(),
            no_referrer: false,
        }
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        Reply::Refuse(refusal).into()
    }
}

/// Why the login refused a request or could not finish one: the login's part of the one
/// error path (`crate::failure` turns it into what the visitor sees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A 快照页 visitor on a route with `allow_snapshot = false`.
    Snapshot,
    /// Not a WeChat browser, on a route with `non_wechat = "deny"`.
    NotWeChat,
    /// No WeChat identity, on a route whose access list only WeChat can satisfy.
    Unnamed,
    /// Logged in, and not on the access list.
    NotAdmitted { openid: String },
    /// This client had too many callbacks refused lately; it may try again after this.
    TooManyRefused(Duration),
    /// This appid's WeChat API budget is spent until then.
    WeChatBudget(Duration),
    /// The callback was not a GET or HEAD.
    CallbackMethod,
    /// No pending login in this browser for the state it brought.
    StaleLogin,
    /// The callback's exchange failed; `retry` is the page the login started from.
    Callback {
        failure: flight::Failure,
        retry: String,
    },
    /// The session store, the callback's single flight or the identity's signing failed.
    Unavailable,
    /// No such endpoint under `/_wxgate/`.
    NoEndpoint,
}
