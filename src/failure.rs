//! Every failure a visitor can meet, in one type: the request's own (limits, a bad path, no
//! route), the proxy's ([`ProxyError`]) and the login's ([`Refusal`]), each layer's typed
//! error mapped here once. `pages::render` is the one place a failure becomes a response,
//! as a page for browsers or JSON for scripts.

use http::StatusCode;

use crate::login::Refusal;
use crate::login::flight;
use crate::login::throttle::retry_after_secs;
use crate::proxy::ProxyError;

/// A failure the gateway answers itself. What it carries is safe to show to the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request is malformed (bad path, bad framing…); the reason is safe to show.
    BadRequest(&'static str),
    /// The request is understood and refused; the reason is safe to show.
    Forbidden(&'static str),
    UriTooLong,
    HeadersTooLarge,
    PayloadTooLarge,
    NoRoute,
    /// The upstream refused the connection or could not be reached in time.
    UpstreamUnreachable,
    /// The upstream took longer than the route's timeout to answer.
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, malformed answer).
    UpstreamFailed,
    /// The gateway is shutting down or saturated, or its session store failed.
    Unavailable,
    /// The client started or finished too many logins; try again after this many seconds.
    TooManyRequests(u64),
    /// A method the gateway does not forward (CONNECT: it proxies requests, not tunnels).
    MethodNotAllowed,
    /// The login callback was called with another method than GET or HEAD.
    CallbackMethod,
    /// A 快照页 (snapshot mode) visitor on a route that needs the real profile.
    SnapshotRefused,
    /// Not a WeChat browser, on a route that lets only WeChat in (`non_wechat = "deny"`).
    WeChatOnly,
    /// A visitor WeChat has not named, on a route with an access list.
    ListedVisitorsOnly,
    /// A logged-in visitor the route's access list does not name; the page shows the
    /// openid so the visitor can ask to be let in.
    NotAdmitted {
        openid: String,
    },
    /// This appid's WeChat API budget is spent; retry after this many seconds.
    LoginsBusy(u64),
    /// A login link this browser holds no pending login for (expired, foreign, replayed).
    LoginExpired,
    /// The login callback failed; `retry` is the page to try again from.
    LoginFailed {
        failure: flight::Failure,
        retry: String,
    },
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        use flight::Failure as Callback;
        match self {
            Failure::BadRequest(_) | Failure::LoginExpired => StatusCode::BAD_REQUEST,
            Failure::Forbidden(_)
            | Failure::SnapshotRefused
            | Failure::WeChatOnly
            | Failure::ListedVisitorsOnly
            | Failure::NotAdmitted { .. } => StatusCode::FORBIDDEN,
            Failure::UriTooLong => StatusCode::URI_TOO_LONG,
            Failure::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Failure::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::UpstreamUnreachable | Failure::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Failure::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Unavailable | Failure::LoginsBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Failure::MethodNotAllowed | Failure::CallbackMethod => StatusCode::METHOD_NOT_ALLOWED,
            Failure::LoginFailed { failure, .. } => match failure {
                Callback::Declined => StatusCode::FORBIDDEN,
                Callback::BadCode => StatusCode::BAD_REQUEST,
                Callback::WeChatTimeout => StatusCode::GATEWAY_TIMEOUT,
                Callback::WeChatUnavailable | Callback::Store => StatusCode::SERVICE_UNAVAILABLE,
                Callback::WeChatError => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// Seconds a client should wait before trying again, for the answers that say so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Failure::TooManyRequests(seconds) | Failure::LoginsBusy(seconds) => Some(*seconds),
            _ => None,
        }
    }
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        match error {
            ProxyError::Tunnel => Failure::MethodNotAllowed,
            ProxyError::Target => Failure::BadRequest("The request target cannot be forwarded."),
            ProxyError::Unreachable => Failure::UpstreamUnreachable,
            ProxyError::Timeout => Failure::UpstreamTimeout,
            ProxyError::Broken => Failure::UpstreamFailed,
            ProxyError::BodyTooLarge => Failure::PayloadTooLarge,
            ProxyError::BadBody => {
                Failure::BadRequest("The request body is malformed or incomplete.")
            }
        }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Snapshot => Failure::SnapshotRefused,
            Refusal::NotWeChat => Failure::WeChatOnly,
            Refusal::Unnamed => Failure::ListedVisitorsOnly,
            Refusal::NotAdmitted { openid } => Failure::NotAdmitted { openid },
            Refusal::TooManyRefused(wait) => Failure::TooManyRequests(retry_after_secs(wait)),
            Refusal::WeChatBudget(wait) => Failure::LoginsBusy(retry_after_secs(wait)),
            Refusal::CallbackMethod => Failure::CallbackMethod,
            Refusal::StaleLogin => Failure::LoginExpired,
            Refusal::Callback { failure, retry } => Failure::LoginFailed { failure, retry },
            Refusal::Unavailable => Failure::Unavailable,
            Refusal::NoEndpoint => Failure::NoRoute,
        }
    }
}
