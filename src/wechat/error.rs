//! What can go wrong talking to WeChat: where it came from (transport, an errcode, a
//! malformed answer), whether one retry makes sense, and a coarse `ErrorKind` the gateway
//! turns into a page. Nothing here carries a URL, a secret, a code or a token.

use std::fmt;

/// The WeChat endpoint a call went to; printing it never shows the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    AccessToken,
    RefreshToken,
    UserInfo,
    Auth,
    /// `/cgi-bin/stable_token`: the account's basic-support access_token (JS-SDK).
    StableToken,
    /// `/cgi-bin/ticket/getticket?type=jsapi`: the JS-SDK ticket.
    JsapiTicket,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::AccessToken => "/sns/oauth2/access_token",
            Endpoint::RefreshToken => "/sns/oauth2/refresh_token",
            Endpoint::UserInfo => "/sns/userinfo",
            Endpoint::Auth => "/sns/auth",
            Endpoint::StableToken => "/cgi-bin/stable_token",
            Endpoint::JsapiTicket => "/cgi-bin/ticket/getticket",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// A WeChat `errcode`, typed for every code the OAuth endpoints are known to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errcode {
    /// -1 system error (系统繁忙).
    SystemBusy,
    /// 40001 invalid credential, access_token is invalid or not latest.
    InvalidCredential,
    /// 40002 invalid grant_type.
    InvalidGrantType,
    /// 40003 invalid openid (does not belong to the token or the app).
    InvalidOpenid,
    /// 40013 invalid appid.
    InvalidAppid,
    /// 40014 invalid access_token (malformed).
    InvalidAccessToken,
    /// 40029 invalid code (unknown, expired, reused or another app's).
    InvalidCode,
    /// 40030 invalid refresh_token.
    InvalidRefreshToken,
    /// 40125 invalid appsecret.
    InvalidAppsecret,
    /// 40163 code been used.
    CodeUsed,
    /// 41001..41009: a required parameter is missing (the number says which).
    MissingParameter(i64),
    /// 42001 access_token expired.
    AccessTokenExpired,
    /// 42002 refresh_token expired.
    RefreshTokenExpired,
    /// 42003 code expired.
    CodeExpired,
    /// 42007 the user changed the password: both tokens are void.
    PasswordChanged,
    /// 43003 require https.
    RequireHttps,
    /// 45009 daily quota reached.
    DailyQuota,
    /// 45011 minute quota reached.
    MinuteQuota,
    /// 40164 the caller's address is not in the account's IP whitelist (basic-support calls).
    IpNotWhitelisted,
    /// 89503 a call from an address outside the whitelist awaits the administrator's
    /// confirmation in WeChat.
    IpAwaitsConfirmation,
    /// 48001 api unauthorized (a snsapi_base or snapshot token on userinfo).
    ApiUnauthorized,
    /// 50001 the user has not authorized this api.
    UserUnauthorized,
    /// Any other non-zero errcode.
    Other(i64),
}

impl Errcode {
    pub fn from_code(code: i64) -> Self {
        match code {
            -1 => Errcode::SystemBusy,
            40001 => Errcode::InvalidCredential,
            40002 => Errcode::InvalidGrantType,
            40003 => Errcode::InvalidOpenid,
            40013 => Errcode::InvalidAppid,
            40014 => Errcode::InvalidAccessToken,
            40029 => Errcode::InvalidCode,
            40030 => Errcode::InvalidRefreshToken,
            40125 => Errcode::InvalidAppsecret,
            40163 => Errcode::CodeUsed,
            41001..=41009 => Errcode::MissingParameter(code),
            42001 => Errcode::AccessTokenExpired,
            42002 => Errcode::RefreshTokenExpired,
            42003 => Errcode::CodeExpired,
            42007 => Errcode::PasswordChanged,
            43003 => Errcode::RequireHttps,
            45009 => Errcode::DailyQuota,
            45011 => Errcode::MinuteQuota,
            40164 => Errcode::IpNotWhitelisted,
            89503 => Errcode::IpAwaitsConfirmation,
            48001 => Errcode::ApiUnauthorized,
            50001 => Errcode::UserUnauthorized,
            other => Errcode::Other(other),
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Errcode::SystemBusy => -1,
            Errcode::InvalidCredential => 40001,
            Errcode::InvalidGrantType => 40002,
            Errcode::InvalidOpenid => 40003,
            Errcode::InvalidAppid => 40013,
            Errcode::InvalidAccessToken => 40014,
            Errcode::InvalidCode => 40029,
            Errcode::InvalidRefreshToken => 40030,
            Errcode::InvalidAppsecret => 40125,
            Errcode::CodeUsed => 40163,
            Errcode::MissingParameter(code) | Errcode::Other(code) => code,
            Errcode::AccessTokenExpired => 42001,
            Errcode::RefreshTokenExpired => 42002,
            Errcode::CodeExpired => 42003,
            Errcode::PasswordChanged => 42007,
            Errcode::RequireHttps => 43003,
            Errcode::DailyQuota => 45009,
            Errcode::MinuteQuota => 45011,
            Errcode::IpNotWhitelisted => 40164,
            Errcode::IpAwaitsConfirmation => 89503,
            Errcode::ApiUnauthorized => 48001,
            Errcode::UserUnauthorized => 50001,
        }
    }

    pub fn kind(self) -> ErrorKind {
        match self {
            Errcode::InvalidCode | Errcode::CodeUsed | Errcode::CodeExpired => ErrorKind::BadCode,
            Errcode::InvalidCredential
            | Errcode::InvalidAccessToken
            | Errcode::AccessTokenExpired => ErrorKind::TokenExpired,
            // The grant itself is dead (or the token is not this user's): only authorize helps.
            Errcode::InvalidRefreshToken
            | Errcode::RefreshTokenExpired
            | Errcode::PasswordChanged
            | Errcode::InvalidOpenid => ErrorKind::RefreshExpired,
            Errcode::ApiUnauthorized | Errcode::UserUnauthorized => ErrorKind::Unauthorized,
            Errcode::InvalidGrantType
            | Errcode::InvalidAppid
            | Errcode::InvalidAppsecret
            | Errcode::MissingParameter(_)
            | Errcode::RequireHttps
            | Errcode::IpNotWhitelisted
            | Errcode::IpAwaitsConfirmation => ErrorKind::Misconfigured,
            Errcode::SystemBusy | Errcode::DailyQuota | Errcode::MinuteQuota => {
                ErrorKind::Unavailable
            }
            Errcode::Other(_) => ErrorKind::Upstream,
        }
    }

    /// Only "system busy" is transient; every other errcode answers the same way twice
    /// (and a second try of a code exchange would burn the code).
    pub fn is_retryable(self) -> bool {
        self == Errcode::SystemBusy
    }
}

impl fmt::Display for Errcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// What the gateway should do about a failure, coarse enough to pick a page and a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The code is invalid, used or expired: the browser's fault (4xx, offer a fresh login).
    BadCode,
    /// The web access_token is invalid or expired: refresh it.
    TokenExpired,
    /// The refresh_token (or the whole grant) is dead: send the user through authorize again.
    RefreshExpired,
    /// The token's scope does not allow the call (48001 on a snsapi_base or snapshot token).
    Unauthorized,
    /// appid/secret/parameters are wrong: an operator problem (502/500).
    Misconfigured,
    /// WeChat is busy, down or over quota (503).
    Unavailable,
    /// WeChat did not answer in time (504).
    Timeout,
    /// Anything else WeChat did that we cannot use (502).
    Upstream,
}

/// Why an answer could not be used even though the transport worked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("body is not JSON ({0})")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("field `{0}` is empty")]
    Empty(&'static str),
}

/// A failed WeChat call. Display/Debug name the endpoint, never the URL or any secret.
#[derive(Debug, thiserror::Error)]
pub enum WeChatError {
    #[error("could not build the WeChat HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("invalid WeChat client settings: {0}")]
    Settings(&'static str),
    #[error("WeChat {endpoint}: no answer within the timeout")]
    Timeout { endpoint: Endpoint },
    #[error("WeChat {endpoint}: transport error: {source}")]
    Transport {
        endpoint: Endpoint,
        #[source]
        source: reqwest::Error,
    },
    #[error("WeChat {endpoint}: HTTP status {status}")]
    Status {
        endpoint: Endpoint,
        status: reqwest::StatusCode,
    },
    #[error("WeChat {endpoint}: errcode {errcode} ({errmsg})")]
    Api {
        endpoint: Endpoint,
        errcode: Errcode,
        /// WeChat's own text, shortened; informative only, never branch on it.
        errmsg: String,
    },
    #[error("WeChat {endpoint}: malformed answer: {problem}")]
    Malformed {
        endpoint: Endpoint,
        problem: Malformed,
    },
}

impl WeChatError {
    /// Wraps a reqwest error, dropping its URL (the token URL holds the AppSecret).
    pub(crate) fn transport(endpoint: Endpoint, error: reqwest::Error) -> Self {
        if error.is_timeout() {
            return WeChatError::Timeout { endpoint };
        }
        WeChatError::Transport {
            endpoint,
            source: error.without_url(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            WeChatError::Build(_) | WeChatError::Settings(_) => ErrorKind::Misconfigured,
            WeChatError::Timeout { .. } => ErrorKind::Timeout,
            WeChatError::Transport { source, .. } if source.is_connect() => ErrorKind::Unavailable,
            WeChatError::Transport { .. } => ErrorKind::Upstream,
            WeChatError::Status { status, .. } if status.is_server_error() => {
                ErrorKind::Unavailable
            }
            WeChatError::Status { .. } | WeChatError::Malformed { .. } => ErrorKind::Upstream,
            WeChatError::Api { errcode, .. } => errcode.kind(),
        }
    }

    /// True when the same call may well succeed a moment later: errcode -1, HTTP 5xx,
    /// timeouts and failures to connect or send. Never for any other errcode.
    pub fn is_retryable(&self) -> bool {
        match self {
            WeChatError::Timeout { .. } => true,
            WeChatError::Transport { source, .. } => source.is_connect() || source.is_request(),
            WeChatError::Status { status, .. } => status.is_server_error(),
            WeChatError::Api { errcode, .. } => errcode.is_retryable(),
            WeChatError::Build(_) | WeChatError::Settings(_) | WeChatError::Malformed { .. } => {
                false
            }
        }
    }

    /// The errcode WeChat answered with, if this failure is one.
    /// What a metric calls this failure: WeChat's errcode, or the kind of transport failure.
    /// Never a URL, a token or WeChat's text.
    pub fn metric_label(&self) -> String {
        match self {
            WeChatError::Api { errcode, .. } => errcode.code().to_string(),
            WeChatError::Timeout { .. } => "timeout".to_owned(),
            WeChatError::Status { status, .. } => format!("http_{}xx", status.as_u16() / 100),
            WeChatError::Transport { .. } => "transport".to_owned(),
            WeChatError::Malformed { .. } => "malformed".to_owned(),
            WeChatError::Build(_) | WeChatError::Settings(_) => "client".to_owned(),
        }
    }

    pub fn errcode(&self) -> Option<Errcode> {
        match self {
            WeChatError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            WeChatError::Build(_) | WeChatError::Settings(_) => None,
            WeChatError::Timeout { endpoint }
            | WeChatError::Transport { endpoint, .. }
            | WeChatError::Status { endpoint, .. }
            | WeChatError::Api { endpoint, .. }
            | WeChatError::Malformed { endpoint, .. } => Some(*endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_errcode_has_a_type_and_the_right_kind() {
        use ErrorKind::*;
        let table: &[(i64, ErrorKind, bool)] = &[
            (-1, Unavailable, true),
            (40001, TokenExpired, false),
            (40002, Misconfigured, false),
            (40003, RefreshExpired, false),
            (40013, Misconfigured, false),
            (40014, TokenExpired, false),
            (40029, BadCode, false),
            (40030, RefreshExpired, false),
            (40125, Misconfigured, false),
            (40163, BadCode, false),
            (41001, Misconfigured, false),
            (41002, Misconfigured, false),
            (41003, Misconfigured, false),
            (41004, Misconfigured, false),
            (41008, Misconfigured, false),
            (41009, Misconfigured, false),
            (42001, TokenExpired, false),
            (42002, RefreshExpired, false),
            (42003, BadCode, false),
            (42007, RefreshExpired, false),
            (43003, Misconfigured, false),
            (45009, Unavailable, false),
            (45011, Unavailable, false),
            (40164, Misconfigured, false),
            (89503, Misconfigured, false),
            (48001, Unauthorized, false),
            (50001, Unauthorized, false),
            (99999, Upstream, false),
        ];
        for &(code, kind, retryable) in table {
            let errcode = Errcode::from_code(code);
            assert_eq!(errcode.code(), code, "round trip of {code}");
            assert_eq!(errcode.kind(), kind, "kind of {code}");
            assert_eq!(errcode.is_retryable(), retryable, "retryable {code}");
            let known = !matches!(errcode, Errcode::Other(_));
            assert_eq!(known, code != 99999, "{code} has a typed variant");
        }
    }

    #[test]
    fn api_errors_keep_errcode_kind_and_retry_decision() {
        let err = WeChatError::Api {
            endpoint: Endpoint::AccessToken,
            errcode: Errcode::CodeUsed,
            errmsg: "code been used, rid: 6391a66c-60723589-7d1e462f".into(),
        };
        assert_eq!(err.kind(), ErrorKind::BadCode);
        assert!(!err.is_retryable());
        assert_eq!(err.errcode(), Some(Errcode::CodeUsed));
        let text = err.to_string();
        assert!(
            text.contains("/sns/oauth2/access_token") && text.contains("40163"),
            "{text}"
        );
    }

    #[test]
    fn http_status_errors_are_retryable_only_for_5xx() {
        let cases = [
            (500, true, ErrorKind::Unavailable),
            (503, true, ErrorKind::Unavailable),
            (404, false, ErrorKind::Upstream),
            (302, false, ErrorKind::Upstream),
        ];
        for (status, retryable, kind) in cases {
            let err = WeChatError::Status {
                endpoint: Endpoint::UserInfo,
                status: reqwest::StatusCode::from_u16(status).unwrap(),
            };
            assert_eq!(err.is_retryable(), retryable, "{status}");
            assert_eq!(err.kind(), kind, "{status}");
        }
        let timeout = WeChatError::Timeout {
            endpoint: Endpoint::Auth,
        };
        assert!(timeout.is_retryable());
        assert_eq!(timeout.kind(), ErrorKind::Timeout);
        let malformed = WeChatError::Malformed {
            endpoint: Endpoint::Auth,
            problem: Malformed::NotObject,
        };
        assert!(!malformed.is_retryable());
        assert_eq!(malformed.kind(), ErrorKind::Upstream);
    }
}
