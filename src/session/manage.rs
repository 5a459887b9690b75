//! `wxgate sessions`: count, inspect, revoke and purge sessions in the configured store
//! from the command line. What it prints about a session is what an operator needs to
//! answer a user — times, scope, nickname — never a token or a session id.
//!
//! redb allows one process per file: against a running gateway's redb file these commands
//! fail with "in use by another process". Stop the gateway first, or use Redis, whose
//! sessions any number of processes may manage while gateways serve.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use super::open::{Backend, StoreOpenError, open_backend};
use super::{Session, StoreError};
use crate::config::SessionConfig;

/// Longer than a request's store timeout: these commands may walk the whole store.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// How many live sessions the store holds.
    Count,
    /// The live sessions of one user.
    Inspect { appid: String, openid: String },
    /// Logs every session of one user out.
    Revoke { appid: String, openid: String },
    /// Removes expired sessions now.
    PurgeExpired,
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(
        "session.store is \"memory\": its sessions live inside the gateway process; \
         `wxgate sessions` works on redb and redis stores"
    )]
    MemoryStore,
    #[error(transparent)]
    Open(#[from] StoreOpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `command` against the store `config` describes; returns what to print.
pub async fn run(config: &SessionConfig, command: &Command) -> Result<String, ManageError> {
    let backend = open_backend(config, COMMAND_TIMEOUT.max(config.store_timeout))?;
    if matches!(backend, Backend::Memory(_)) {
        return Err(ManageError::MemoryStore);
    }
    let store = backend.as_store();
    Ok(match command {
        Command::Count => {
            let live = store.count().await?;
            format!("{live} live session{}\n", plural(live))
        }
        Command::Inspect { appid, openid } => {
            let sessions = match &backend {
                Backend::Redb(redb) => redb.user_sessions(appid, openid).await?,
                Backend::Redis(redis) => redis.user_sessions(appid, openid).await?,
                Backend::Memory(_) => return Err(ManageError::MemoryStore),
            };
            describe(openid, &sessions)
        }
        Command::Revoke { appid, openid } => {
            let revoked = store.delete_user(appid, openid).await?;
            format!(
                "revoked {revoked} session{} of openid {openid}\n",
                plural(revoked)
            )
        }
        Command::PurgeExpired => {
            let purged = store.sweep_expired().await?;
            let mut out = format!("purged {purged} expired session{}\n", plural(purged));
            if matches!(backend, Backend::Redis(_)) {
                out.push_str("(Redis removes expired sessions by itself)\n");
            }
            out
        }
    })
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One block per session, oldest first.
fn describe(openid: &str, sessions: &[Session]) -> String {
    let mut sorted: Vec<&Session> = sessions.iter().collect();
    sorted.sort_by_key(|s| s.created_at);
    let mut out = format!(
        "{} live session{} of openid {openid}\n",
        sorted.len(),
        plural(sorted.len() as u64)
    );
    for (n, s) in sorted.iter().enumerate() {
        let nickname = s
            .profile
            .as_ref()
            .map_or("-", |p| p.nickname.as_str())
            .to_owned();
        let _ = write!(
            out,
            "\nsession {}\n  scope            {}\n  nickname         {}\n  snapshot user    {}\n  \
             created          {}\n  last seen        {}\n  expires          {}\n  \
             profile fetched  {}\n",
            n + 1,
            s.scope.as_str(),
            nickname,
            if s.snapshot { "yes" } else { "no" },
            time(s.created_at),
            time(s.last_seen),
            time(s.expires_at),
            s.profile_fetched_at.map_or_else(|| "-".to_owned(), time),
        );
    }
    out
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Lifetimes;
    use crate::session::test_support::{ACCESS, REFRESH, at, login};

    #[test]
    fn inspect_shows_times_scope_and_nickname_but_no_token() {
        let life = Lifetimes::new(Duration::from_secs(600), Duration::from_secs(3600));
        let session = Session::new(login("o1"), at(0), life);
        let out = describe("o1", &[session.clone(), session]);
        assert!(out.starts_with("2 live sessions of openid o1\n"), "{out}");
        assert!(
            out.contains("snsapi_userinfo") && out.contains("小明😀"),
            "{out}"
        );
        assert!(out.contains("2023-11-14T22:13:20Z"), "{out}");
        for secret in [ACCESS, REFRESH] {
            assert!(!out.contains(secret), "{out}");
        }
    }

    #[tokio::test]
    async fn the_memory_store_cannot_be_managed_from_outside() {
        let config = SessionConfig {
            store: crate::config::StoreKind::Memory,
            ..SessionConfig::default()
        };
        let error = run(&config, &Command::Count).await.unwrap_err();
        assert!(matches!(error, ManageError::MemoryStore));
    }
}
