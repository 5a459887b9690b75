//! Step 3 of web authorization: keeping an `snsapi_userinfo` session's profile fresh.
//! When the profile is older than `session.profile_refresh`, one background task (per
//! session, across every gateway sharing the store) refreshes the web access_token with the
//! refresh_token if it has to, fetches userinfo again and stores the session; the request
//! that noticed goes on with the identity it has. A refresh_token WeChat declares dead
//! (42002, 40030, …) marks the session so its next navigation goes through authorize.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::metrics::LoginMetrics;
use crate::session::{Profile, Session, SessionCache, StorageKey, WeChatToken, WeChatTokens};
use crate::wechat::{ErrorKind, TokenGrant, UserInfo, WeChatClient, WeChatError};

/// How long one refresh may hold its lease: longer than two WeChat calls with a retry each,
/// short enough that a gateway dying mid-refresh delays the next attempt only briefly.
const LEASE: Duration = Duration::from_secs(30);
/// An access_token this close to its end is refreshed before use rather than risk 42001.
const ACCESS_MARGIN: Duration = Duration::from_secs(60);

/// What a request should do about its session's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Fresh enough, or not a profile session.
    Fresh,
    /// Stale, and the refresh_token can renew it: serve now, refresh in the background.
    Refreshable,
    /// Stale, and WeChat will not refresh it any more: a navigation goes through authorize.
    Reauthorize,
}

/// How the profile of a session stands at `now`.
pub fn freshness(session: &Session, now: SystemTime, max_age: Duration) -> Freshness {
    if !session.profile_is_stale(now, max_age) {
        Freshness::Fresh
    } else if session.tokens.refresh_usable(now) {
        Freshness::Refreshable
    } else {
        Freshness::Reauthorize
    }
}

/// Runs profile refreshes off the request path.
#[derive(Clone)]
pub struct ProfileRefresher {
    wechat: WeChatClient,
    sessions: Arc<SessionCache>,
    metrics: LoginMetrics,
}

/// Why a refresh did not store a new profile. Only kinds are logged, never tokens.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("wechat: {0}")]
    WeChat(#[from] WeChatError),
    #[error("session store: {0}")]
    Store(#[from] crate::session::StoreError),
}

impl ProfileRefresher {
    pub fn new(wechat: WeChatClient, sessions: Arc<SessionCache>, metrics: LoginMetrics) -> Self {
        ProfileRefresher {
            wechat,
            sessions,
            metrics,
        }
    }

    /// Starts a refresh of the session under `key` unless one is already running
    /// somewhere; returns at once.
    pub fn spawn(&self, key: StorageKey, session: Session) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.sessions.store().claim_refresh(&key, LEASE).await {
                Ok(true) => this.refresh(&key, session).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "profile refresh lease unavailable"),
            }
        });
    }

    async fn refresh(&self, key: &StorageKey, session: Session) {
        match self.renewed(session.clone()).await {
            Ok(renewed) => match self.store(key, renewed).await {
                Ok(()) => self.metrics.refreshed("ok"),
                Err(e) => {
                    self.metrics.refreshed("failed");
                    tracing::warn!(error = %e, "refreshed profile could not be stored");
                }
            },
            Err(RefreshError::WeChat(e)) if e.kind() == ErrorKind::RefreshExpired => {
                self.metrics.refreshed("dead_grant");
                tracing::info!(error = %e, "refresh_token refused; the next navigation re-authorizes");
                let mut dead = session;
                dead.tokens.refresh_expires_at = SystemTime::UNIX_EPOCH;
                if let Err(e) = self.store(key, dead).await {
                    tracing::warn!(error = %e, "dead refresh_token could not be recorded");
                }
            }
            Err(e) => {
                // Transient (WeChat busy or down): the lease ends and a later request retries.
                self.metrics.refreshed("failed");
                tracing::warn!(error = %e, "profile refresh failed");
            }
        }
    }

    /// The session with a new profile, and new tokens where WeChat issued them.
    async fn renewed(&self, mut session: Session) -> Result<Session, RefreshError> {
        let now = SystemTime::now();
        if !usable_for_a_while(&session.tokens, now) {
            session.tokens = self.refreshed_tokens(&session.tokens).await?;
        }
        let info = match self.userinfo(&session).await {
            Err(e) if e.kind() == ErrorKind::TokenExpired => {
                // Our clock and WeChat's disagree: refresh once and ask again.
                session.tokens = self.refreshed_tokens(&session.tokens).await?;
                self.userinfo(&session).await?
            }
            other => other?,
        };
        session.unionid = info.unionid.clone().or(session.unionid);
        session.profile = Some(profile_of(info));
        session.profile_fetched_at = Some(SystemTime::now());
        Ok(session)
    }

    async fn userinfo(&self, session: &Session) -> Result<UserInfo, WeChatError> {
        self.wechat
            .userinfo(session.tokens.access_token.expose(), &session.openid)
            .await
    }

    async fn refreshed_tokens(&self, old: &WeChatTokens) -> Result<WeChatTokens, WeChatError> {
        let grant = self.wechat.refresh(old.refresh_token.expose()).await?;
        Ok(tokens_after_refresh(old, &grant, SystemTime::now()))
    }

    /// Stores the new session over the latest copy's clocks, so a refresh never undoes a
    /// touch made meanwhile, nor revives a session logged out meanwhile.
    async fn store(&self, key: &StorageKey, mut session: Session) -> Result<(), RefreshError> {
        let Some(current) = self.sessions.store().get(key).await? else {
            return Ok(());
        };
        session.last_seen = current.last_seen.max(session.last_seen);
        session.expires_at = current.expires_at;
        self.sessions.save(key, session).await?;
        Ok(())
    }
}

fn usable_for_a_while(tokens: &WeChatTokens, now: SystemTime) -> bool {
    tokens.access_usable(now + ACCESS_MARGIN)
}

/// WeChat answers a refresh with a new access_token and the refresh_token (the same one,
/// or a new one on some accounts); the refresh_token's 30 days run from the login unless
/// the token itself changed.
fn tokens_after_refresh(old: &WeChatTokens, grant: &TokenGrant, now: SystemTime) -> WeChatTokens {
    let refresh_token = grant.refresh_token.expose();
    let refresh_changed = !refresh_token.is_empty() && refresh_token != old.refresh_token.expose();
    WeChatTokens {
        access_token: WeChatToken::new(grant.access_token.expose()),
        access_expires_at: now + grant.expires_in,
        refresh_token: if refresh_changed {
            WeChatToken::new(refresh_token)
        } else {
            old.refresh_token.clone()
        },
        refresh_expires_at: if refresh_changed {
            now + crate::session::Lifetimes::DEFAULT_MAX_LIFETIME
        } else {
            old.refresh_expires_at
        },
    }
}

/// The profile fields of a userinfo answer, as a session keeps them.
pub fn profile_of(info: UserInfo) -> Profile {
    Profile {
        nickname: info.nickname,
        headimgurl: info.headimgurl,
        sex: info.sex,
        province: info.province,
        city: info.city,
        country: info.country,
        privilege: info.privilege,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::AuthScope;
    use crate::session::Lifetimes;
    use crate::session::test_support::{at, login};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn userinfo_session() -> Session {
        let mut new = login("o1");
        new.scope = AuthScope::UserInfo;
        new.snapshot = false;
        new.profile = Some(Profile::default());
        Session::new(new, at(0), Lifetimes::with_ttl(7 * DAY))
    }

    #[test]
    fn a_stale_profile_is_refreshed_while_the_refresh_token_lives_and_reauthorized_after() {
        let mut session = userinfo_session();
        assert_eq!(freshness(&session, at(3600), DAY), Freshness::Fresh);
        session.tokens.refresh_expires_at = at(2 * 86_400);
        assert_eq!(freshness(&session, at(86_400), DAY), Freshness::Refreshable);
        assert_eq!(
            freshness(&session, at(2 * 86_400), DAY),
            Freshness::Reauthorize
        );
        session.tokens.refresh_expires_at = SystemTime::UNIX_EPOCH;
        assert_eq!(freshness(&session, at(86_400), DAY), Freshness::Reauthorize);
    }

    #[test]
    fn base_sessions_have_no_profile_to_refresh() {
        let mut session = userinfo_session();
        session.scope = AuthScope::Base;
        session.profile = None;
        assert_eq!(freshness(&session, at(40 * 86_400), DAY), Freshness::Fresh);
    }
}
