//! The identity JWT's claims (the WeChat facts plus iss/aud/sub/iat/exp/jti) and the minted
//! token cached per session, re-signed only when it nears expiry.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::IdentityError;

/// A token is re-signed once less than this share of its lifetime remains...
const REFRESH_FRACTION: u32 = 5;
/// ...or less than this, whichever is longer, so upstreams never see one about to expire.
const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(10);

/// What the gateway knows about the visitor, from the session; `None` means unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityFacts {
    pub appid: String,
    pub scope: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub nickname: Option<String>,
    pub headimgurl: Option<String>,
    pub sex: Option<u8>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub country: Option<String>,
    pub privilege: Option<Vec<String>>,
    pub snapshot: Option<bool>,
}

/// The identity JWT payload. Field names are the wire names upstreams read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub appid: String,
    pub scope: String,
    pub openid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headimgurl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privilege: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// A 快照页 visitor's unionid, which WeChat makes up for the virtual account: never the
    /// person's real unionid, so it is kept out of `unionid` where an upstream would merge
    /// accounts on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_unionid: Option<String>,
}

impl Claims {
    /// Claims for one visitor, valid from `now` for `ttl`, with a fresh random `jti`;
    /// `sub` is the openid.
    pub fn new(
        facts: IdentityFacts,
        issuer: &str,
        audience: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Self {
        let iat = unix_seconds(now);
        let snapshot = facts.snapshot == Some(true);
        let (unionid, snapshot_unionid) = if snapshot {
            (None, facts.unionid)
        } else {
            (facts.unionid, None)
        };
        Claims {
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            sub: facts.openid.clone(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            jti: random_jti(),
            appid: facts.appid,
            scope: facts.scope,
            openid: facts.openid,
            unionid,
            nickname: facts.nickname,
            headimgurl: facts.headimgurl,
            sex: facts.sex,
            province: facts.province,
            city: facts.city,
            country: facts.country,
            privilege: facts.privilege,
            snapshot: facts.snapshot,
            snapshot_unionid,
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// An instant out of `SystemTime`'s range maps to the epoch: such a token is never fresh.
fn system_time(unix_seconds: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(unix_seconds))
        .unwrap_or(UNIX_EPOCH)
}

fn random_jti() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// A signed identity token ready to send upstream, kept per session so one signature serves
/// many requests.
#[derive(Clone)]
pub struct MintedIdentity {
    value: HeaderValue,
    expires_at: SystemTime,
    refresh_at: SystemTime,
}

impl fmt::Debug for MintedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedIdentity")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl MintedIdentity {
    /// Wraps a token signed over `claims`; its lifetime is taken from their `iat`/`exp`.
    pub fn new(token: &str, claims: &Claims) -> Result<Self, IdentityError> {
        let mut value = HeaderValue::from_str(token).map_err(|_| IdentityError::HeaderValue)?;
        // Keeps the token out of HTTP/2 header compression tables.
        value.set_sensitive(true);
        let lifetime = Duration::from_secs(claims.exp.saturating_sub(claims.iat));
        let margin = (lifetime / REFRESH_FRACTION)
            .max(MIN_REFRESH_MARGIN)
            .min(lifetime);
        let expires_at = system_time(claims.exp);
        let refresh_at = system_time(claims.exp.saturating_sub(margin.as_secs()));
        Ok(MintedIdentity {
            value,
            expires_at,
            refresh_at,
        })
    }

    /// The header value to send upstream.
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Whether the token can still be reused at `now`; false means "sign a new one".
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.refresh_at
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::identity::test_support::{AUDIENCE, ISSUER, facts};

    fn claims_at(now: SystemTime, ttl: Duration) -> Claims {
        Claims::new(facts(), ISSUER, AUDIENCE, ttl, now)
    }

    #[test]
    fn claims_carry_the_facts_and_a_window_of_exactly_the_ttl() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let claims = claims_at(now, Duration::from_secs(300));
        assert_eq!(claims.sub, claims.openid);
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.exp, 1_700_000_300);
        assert_eq!(claims.nickname.as_deref(), Some("小明😀"));
    }

    #[test]
    fn jti_is_128_random_bits_in_base64url() {
        let now = SystemTime::now();
        let jtis: HashSet<String> = (0..1000)
            .map(|_| claims_at(now, Duration::from_secs(300)).jti)
            .collect();
        assert_eq!(jtis.len(), 1000);
        for jti in jtis.iter().take(10) {
            assert_eq!(URL_SAFE_NO_PAD.decode(jti).unwrap().len(), 16, "{jti}");
        }
    }

    #[test]
    fn claims_serialise_with_the_wire_names_and_omit_unknown_facts() {
        let mut facts = facts();
        facts.unionid = None;
        facts.snapshot = Some(true);
        let claims = Claims::new(facts, ISSUER, AUDIENCE, Duration::from_secs(60), UNIX_EPOCH);
        let json = serde_json::to_value(&claims).unwrap();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "appid",
                "aud",
                "city",
                "country",
                "exp",
                "headimgurl",
                "iat",
                "iss",
                "jti",
                "nickname",
                "openid",
                "privilege",
                "province",
                "scope",
                "sex",
                "snapshot",
                "sub"
            ]
        );
        assert_eq!(json["snapshot"], true);
        assert_eq!(json["sex"], 1);
    }

    #[test]
    fn minted_identity_is_reused_until_close_to_expiry() {
        let iat = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |secs: u64| iat + Duration::from_secs(secs);
        // (ttl, instant, fresh): re-sign once less than 20 % (at least 10 s) remains.
        let cases = [
            (300, 0, true),
            (300, 239, true),
            (300, 240, false),
            (300, 400, false),
            (30, 19, true),
            (30, 20, false),
            (5, 0, false),
        ];
        for (ttl, elapsed, fresh) in cases {
            let claims = claims_at(iat, Duration::from_secs(ttl));
            let minted = MintedIdentity::new("a.b.c", &claims).unwrap();
            assert_eq!(
                minted.is_fresh(at(elapsed)),
                fresh,
                "ttl {ttl}s at +{elapsed}s"
            );
            assert_eq!(minted.expires_at(), at(ttl));
        }
    }

    #[test]
    fn minted_identity_is_a_sensitive_header_and_hidden_from_debug() {
        let claims = claims_at(SystemTime::now(), Duration::from_secs(300));
        let minted = MintedIdentity::new("header.payload.signature", &claims).unwrap();
        assert_eq!(minted.value(), "header.payload.signature");
        assert!(minted.value().is_sensitive());
        assert!(!format!("{minted:?}").contains("signature"));
        assert!(MintedIdentity::new("bad\ntoken", &claims).is_err());
    }
}
