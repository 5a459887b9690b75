//! What one session holds — the visitor's WeChat identity and profile, the scope granted,
//! the WeChat web tokens — and the two clocks it lives by: a sliding idle ttl and an
//! absolute lifetime from login.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::identity::IdentityFacts;
use crate::login::AuthScope;

/// How long sessions live. The absolute lifetime defaults to the refresh_token's 30 days:
/// past it the gateway could not refresh the profile anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Sliding: an idle session dies this long after it was last seen.
    pub ttl: Duration,
    /// Absolute: no session outlives its login by more than this, however busy.
    pub max_lifetime: Duration,
}

impl Lifetimes {
    pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
    /// `last_seen` is written back at most this often, so a busy session costs a store
    /// write per minute, not per request.
    const MAX_TOUCH_INTERVAL: Duration = Duration::from_secs(60);

    pub fn new(ttl: Duration, max_lifetime: Duration) -> Self {
        Lifetimes { ttl, max_lifetime }
    }

    /// The configured ttl with the default absolute lifetime.
    pub fn with_ttl(ttl: Duration) -> Self {
        Lifetimes::new(ttl, Self::DEFAULT_MAX_LIFETIME)
    }

    /// How stale `last_seen` may get before a request writes it back: a tenth of the ttl,
    /// at most a minute. A session thus expires between 90 % and 100 % of the ttl after its
    /// last request, never later.
    pub fn touch_interval(&self) -> Duration {
        (self.ttl / 10).min(Self::MAX_TOUCH_INTERVAL)
    }

    /// `min(last_seen + ttl, created_at + max_lifetime)`; saturates far in the future.
    pub fn expires_at(&self, created_at: SystemTime, last_seen: SystemTime) -> SystemTime {
        let idle_end = saturating_add(last_seen, self.ttl);
        let absolute_end = saturating_add(created_at, self.max_lifetime);
        idle_end.min(absolute_end)
    }
}

fn saturating_add(time: SystemTime, duration: Duration) -> SystemTime {
    // About 10^4 years: representable on every platform, later than any real expiry.
    const FAR: Duration = Duration::from_secs(10_000 * 365 * 24 * 3600);
    time.checked_add(duration)
        .or_else(|| time.checked_add(FAR))
        .unwrap_or(time)
}

/// A WeChat web access_token or refresh_token. Never printed; read it only to call WeChat.
#[derive(Clone, PartialEq, Eq)]
pub struct WeChatToken(String);

impl WeChatToken {
    pub fn new(value: impl Into<String>) -> Self {
        WeChatToken(value.into())
    }

    /// The token itself, for the WeChat client and a store's encryption only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WeChatToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The web tokens of one login (`sns/oauth2/access_token`): the access_token lives about
/// 2 hours, the refresh_token 30 days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeChatTokens {
    pub access_token: WeChatToken,
    pub access_expires_at: SystemTime,
    pub refresh_token: WeChatToken,
    pub refresh_expires_at: SystemTime,
}

impl WeChatTokens {
    pub fn access_usable(&self, now: SystemTime) -> bool {
        now < self.access_expires_at
    }

    pub fn refresh_usable(&self, now: SystemTime) -> bool {
        now < self.refresh_expires_at
    }
}

/// The profile `sns/userinfo` returns (snsapi_userinfo logins only). WeChat now sends
/// empty strings and 0 for much of it; they are kept as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub nickname: String,
    pub headimgurl: String,
    pub sex: u8,
    pub province: String,
    pub city: String,
    pub country: String,
    pub privilege: Vec<String>,
}

/// What a login yields, before it becomes a [`Session`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub scope: AuthScope,
    /// A 快照页 virtual account (`is_snapshotuser`).
    pub snapshot: bool,
    pub profile: Option<Profile>,
    pub tokens: WeChatTokens,
}

/// One visitor's session, as every store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub scope: AuthScope,
    pub snapshot: bool,
    pub profile: Option<Profile>,
    pub tokens: WeChatTokens,
    pub created_at: SystemTime,
    pub last_seen: SystemTime,
    pub profile_fetched_at: Option<SystemTime>,
    /// `min(last_seen + ttl, created_at + max_lifetime)`: stores expire the record here.
    pub expires_at: SystemTime,
}

impl Session {
    /// A session born at `now`; a profile that came with the login counts as fetched now.
    pub fn new(login: NewSession, now: SystemTime, lifetimes: Lifetimes) -> Self {
        Session {
            profile_fetched_at: login.profile.as_ref().map(|_| now),
            appid: login.appid,
            openid: login.openid,
            unionid: login.unionid,
            scope: login.scope,
            snapshot: login.snapshot,
            profile: login.profile,
            tokens: login.tokens,
            created_at: now,
            last_seen: now,
            expires_at: lifetimes.expires_at(now, now),
        }
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// The same session seen at `now`: the idle deadline slides, the absolute one does not.
    /// `last_seen` never moves back (gateways' clocks differ a little).
    pub fn touched(&self, now: SystemTime, lifetimes: Lifetimes) -> Self {
        let last_seen = self.last_seen.max(now);
        Session {
            last_seen,
            expires_at: lifetimes.expires_at(self.created_at, last_seen),
            ..self.clone()
        }
    }

    /// Whether a request at `now` should write `last_seen` back to the store.
    pub fn needs_touch(&self, now: SystemTime, lifetimes: Lifetimes) -> bool {
        now.duration_since(self.last_seen)
            .is_ok_and(|idle| idle >= lifetimes.touch_interval())
    }

    /// Whether an `snsapi_userinfo` session's profile is older than `max_age` (or missing).
    pub fn profile_is_stale(&self, now: SystemTime, max_age: Duration) -> bool {
        if self.scope != AuthScope::UserInfo || self.snapshot {
            return false;
        }
        match self.profile_fetched_at {
            None => true,
            Some(fetched) => now.duration_since(fetched).is_ok_and(|age| age >= max_age),
        }
    }

    /// What the identity JWT says about this visitor.
    pub fn identity_facts(&self) -> IdentityFacts {
        let profile = self.profile.as_ref();
        let field = |get: fn(&Profile) -> &String| profile.map(|p| get(p).clone());
        IdentityFacts {
            appid: self.appid.clone(),
            scope: self.scope.as_str().to_owned(),
            openid: self.openid.clone(),
            unionid: self.unionid.clone(),
            nickname: field(|p| &p.nickname),
            headimgurl: field(|p| &p.headimgurl),
            sex: profile.map(|p| p.sex),
            province: field(|p| &p.province),
            city: field(|p| &p.city),
            country: field(|p| &p.country),
            privilege: profile.map(|p| p.privilege.clone()),
            snapshot: self.snapshot.then_some(true),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ACCESS: &str = "ACCESS_TOKEN_c3VwZXJzZWNyZXQ";
    pub(crate) const REFRESH: &str = "REFRESH_TOKEN_bm90Zm9yeW91cmV5ZXM";

    pub(crate) fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    pub(crate) fn login(openid: &str) -> NewSession {
        NewSession {
            appid: "wx2ebfe5f20389c64a".to_owned(),
            openid: openid.to_owned(),
            unionid: Some(format!("union-{openid}")),
            scope: AuthScope::UserInfo,
            snapshot: false,
            profile: Some(Profile {
                nickname: "小明😀".to_owned(),
                headimgurl: "https://thirdwx.qlogo.cn/mmopen/x/132".to_owned(),
                sex: 1,
                province: "广东".to_owned(),
                city: "深圳".to_owned(),
                country: "中国".to_owned(),
                privilege: vec!["CHINAUNICOM".to_owned()],
            }),
            tokens: WeChatTokens {
                access_token: WeChatToken::new(ACCESS),
                access_expires_at: at(7200),
                refresh_token: WeChatToken::new(REFRESH),
                refresh_expires_at: at(30 * 86_400),
            },
        }
    }

    fn lifetimes(ttl: u64, max: u64) -> Lifetimes {
        Lifetimes::new(Duration::from_secs(ttl), Duration::from_secs(max))
    }

    #[test]
    fn new_session_expires_after_the_ttl_or_the_absolute_lifetime_whichever_is_first() {
        // (ttl, max_lifetime, expected expiry)
        let cases = [(600, 3600, 600), (600, 300, 300), (600, 600, 600)];
        for (ttl, max, expected) in cases {
            let session = Session::new(login("o1"), at(0), lifetimes(ttl, max));
            assert_eq!(session.expires_at, at(expected), "ttl {ttl} max {max}");
            assert_eq!((session.created_at, session.last_seen), (at(0), at(0)));
            assert_eq!(session.profile_fetched_at, Some(at(0)));
            assert!(!session.is_expired(at(expected - 1)));
            assert!(session.is_expired(at(expected)));
        }
        let mut base = login("o2");
        base.profile = None;
        assert_eq!(
            Session::new(base, at(0), lifetimes(1, 1)).profile_fetched_at,
            None
        );
    }

    #[test]
    fn touching_slides_the_idle_deadline_but_never_past_the_absolute_lifetime() {
        let life = lifetimes(600, 1000);
        let session = Session::new(login("o1"), at(0), life);
        // (seen at, expected expiry)
        let cases = [(0, 600), (100, 700), (399, 999), (400, 1000), (900, 1000)];
        for (seen, expiry) in cases {
            let touched = session.touched(at(seen), life);
            assert_eq!(touched.last_seen, at(seen));
            assert_eq!(touched.expires_at, at(expiry), "seen at +{seen}s");
            assert_eq!(touched.created_at, at(0));
        }
        // A gateway whose clock is behind does not move last_seen back.
        let later = session.touched(at(300), life);
        assert_eq!(later.touched(at(200), life).last_seen, at(300));
        assert_eq!(later.touched(at(200), life).expires_at, at(900));
    }

    #[test]
    fn last_seen_is_written_back_only_after_a_tenth_of_the_ttl_or_a_minute() {
        // (ttl, idle seconds, due)
        let cases = [
            (600, 0, false),
            (600, 59, false),
            (600, 60, true),
            (300, 29, false),
            (300, 30, true),
            (7 * 86_400, 59, false),
            (7 * 86_400, 60, true),
        ];
        for (ttl, idle, due) in cases {
            let life = lifetimes(ttl, 30 * 86_400);
            let session = Session::new(login("o1"), at(0), life);
            assert_eq!(
                session.needs_touch(at(idle), life),
                due,
                "ttl {ttl} idle {idle}"
            );
        }
        let life = lifetimes(600, 3600);
        let session = Session::new(login("o1"), at(100), life);
        assert!(!session.needs_touch(at(0), life), "clock behind last_seen");
    }

    #[test]
    fn profile_staleness_concerns_userinfo_sessions_only() {
        let day = Duration::from_secs(86_400);
        let life = lifetimes(600, 3600);
        let userinfo = Session::new(login("o1"), at(0), life);
        assert!(!userinfo.profile_is_stale(at(86_399), day));
        assert!(userinfo.profile_is_stale(at(86_400), day));
        let mut base = login("o2");
        base.scope = AuthScope::Base;
        base.profile = None;
        assert!(!Session::new(base, at(0), life).profile_is_stale(at(10 * 86_400), day));
        let mut missing = login("o3");
        missing.profile = None;
        assert!(Session::new(missing, at(0), life).profile_is_stale(at(0), day));
    }

    #[test]
    fn identity_facts_carry_the_profile_and_no_token() {
        let session = Session::new(login("o1"), at(0), lifetimes(600, 3600));
        let facts = session.identity_facts();
        assert_eq!(facts.openid, "o1");
        assert_eq!(facts.scope, "snsapi_userinfo");
        assert_eq!(facts.unionid.as_deref(), Some("union-o1"));
        assert_eq!(facts.nickname.as_deref(), Some("小明😀"));
        assert_eq!(facts.sex, Some(1));
        assert_eq!(facts.snapshot, None);
        let debug = format!("{facts:?}");
        assert!(!debug.contains(ACCESS) && !debug.contains(REFRESH));
    }

    #[test]
    fn debug_of_a_session_and_its_tokens_shows_no_token() {
        let session = Session::new(login("o1"), at(0), lifetimes(600, 3600));
        for debug in [
            format!("{session:?}"),
            format!("{session:#?}"),
            format!("{:?}", session.tokens),
            format!("{:?}", session.tokens.access_token),
        ] {
            assert!(!debug.contains(ACCESS), "{debug}");
            assert!(!debug.contains(REFRESH), "{debug}");
            assert!(!debug.contains("c3VwZXJzZWNyZXQ"), "{debug}");
        }
        assert!(
            format!("{session:?}").contains("o1"),
            "the openid is not a secret"
        );
        assert_eq!(session.tokens.access_token.expose(), ACCESS);
    }

    #[test]
    fn tokens_are_usable_until_their_expiry() {
        let tokens = login("o1").tokens;
        assert!(tokens.access_usable(at(7199)));
        assert!(!tokens.access_usable(at(7200)));
        assert!(tokens.refresh_usable(at(30 * 86_400 - 1)));
        assert!(!tokens.refresh_usable(at(30 * 86_400)));
    }
}
