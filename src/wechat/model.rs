//! The data WeChat hands back: a token grant (code exchange or refresh) and a user profile.
//! Tokens are `Secret`s so that a stray `{:?}` of a grant prints nothing usable.

use std::time::Duration;

use crate::Secret;

/// The answer of `/sns/oauth2/access_token` and `/sns/oauth2/refresh_token`.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: Secret,
    /// Lifetime of `access_token` as WeChat stated it (7200 s in practice).
    pub expires_in: Duration,
    pub refresh_token: Secret,
    pub openid: String,
    /// The granted scopes exactly as WeChat sent them (comma-separated).
    pub scope: String,
    /// Only for snsapi_userinfo grants of an app bound to an Open Platform account.
    pub unionid: Option<String>,
    /// 快照页 virtual account: openid/unionid are not the real user's.
    pub is_snapshotuser: bool,
}

impl TokenGrant {
    /// The granted scopes, split on WeChat's commas.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .split(',')
            .map(str::trim)
            .filter(|scope| !scope.is_empty())
    }

    /// True when this grant may call `/sns/userinfo`.
    pub fn allows_userinfo(&self) -> bool {
        self.scopes().any(|scope| scope == "snsapi_userinfo")
    }
}

/// The answer of `/sns/userinfo`. Since 2021-10-20 `sex` is 0 and the regions are empty.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserInfo {
    pub openid: String,
    /// May hold emoji, legacy private-use emoji and even control characters.
    pub nickname: String,
    pub sex: u8,
    pub province: String,
    pub city: String,
    pub country: String,
    /// Empty when the user has no avatar.
    pub headimgurl: String,
    pub privilege: Vec<String>,
    pub unionid: Option<String>,
}

/// The answer of `/cgi-bin/stable_token`: the account's basic-support access_token, shared by
/// every caller of the account until it expires.
#[derive(Debug, Clone)]
pub struct AppToken {
    pub access_token: Secret,
    /// "目前是7200秒之内的值": a token fetched again in normal mode has less left.
    pub expires_in: Duration,
}

/// The answer of `/cgi-bin/ticket/getticket?type=jsapi`.
#[derive(Debug, Clone)]
pub struct JsapiTicket {
    pub ticket: Secret,
    pub expires_in: Duration,
}
