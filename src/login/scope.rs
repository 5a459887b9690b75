//! The two WeChat authorize scopes (`snsapi_base`, `snsapi_userinfo`).
//! A route's `public` setting is not a scope: it never reaches the authorize page.

use std::fmt;
use std::str::FromStr;

/// The `scope` parameter sent to WeChat's authorize endpoint.
/// Ordered by strength: a `UserInfo` login also satisfies a `Base` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthScope {
    /// `snsapi_base`: silent, openid only.
    Base,
    /// `snsapi_userinfo`: consent page, profile through `sns/userinfo`.
    UserInfo,
}

/// A scope string that is neither `snsapi_base` nor `snsapi_userinfo`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown WeChat scope (expected snsapi_base or snsapi_userinfo)")]
pub struct UnknownScope;

impl AuthScope {
    /// The literal WeChat expects in the authorize URL and returns in the token response.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScope::Base => "snsapi_base",
            AuthScope::UserInfo => "snsapi_userinfo",
        }
    }

    /// Whether a login made with `self` is enough for a route that requires `required`.
    pub fn satisfies(self, required: AuthScope) -> bool {
        self >= required
    }

    /// Compact tag used inside the state cookie.
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            AuthScope::Base => 0,
            AuthScope::UserInfo => 1,
        }
    }

    pub(crate) fn from_wire(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(AuthScope::Base),
            1 => Some(AuthScope::UserInfo),
            _ => None,
        }
    }
}

impl FromStr for AuthScope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "snsapi_base" => Ok(AuthScope::Base),
            "snsapi_userinfo" => Ok(AuthScope::UserInfo),
            _ => Err(UnknownScope),
        }
    }
}

impl fmt::Display for AuthScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_strings_round_trip_and_unknown_is_refused() {
        for scope in [AuthScope::Base, AuthScope::UserInfo] {
            assert_eq!(scope.as_str().parse::<AuthScope>(), Ok(scope));
            assert_eq!(AuthScope::from_wire(scope.to_wire()), Some(scope));
        }
        for bad in ["", "SNSAPI_BASE", "snsapi_login", "public", "snsapi_base "] {
            assert_eq!(bad.parse::<AuthScope>(), Err(UnknownScope), "{bad:?}");
        }
        assert_eq!(AuthScope::from_wire(2), None);
    }

    #[test]
    fn userinfo_satisfies_base_but_not_the_reverse() {
        assert!(AuthScope::UserInfo.satisfies(AuthScope::Base));
        assert!(AuthScope::UserInfo.satisfies(AuthScope::UserInfo));
        assert!(AuthScope::Base.satisfies(AuthScope::Base));
        assert!(!AuthScope::Base.satisfies(AuthScope::UserInfo));
    }
}
