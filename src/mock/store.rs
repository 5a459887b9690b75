//! The mock's memory: issued codes, access and refresh tokens, pending consent tickets,
//! and a clock tests can move forward. Every check-and-consume happens under one lock,
//! so two concurrent exchanges of one code give exactly one success.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::users::MockUser;

/// The two scopes of Official Account web authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Base,
    UserInfo,
}

impl Scope {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "snsapi_base" => Some(Scope::Base),
            "snsapi_userinfo" => Some(Scope::UserInfo),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Base => "snsapi_base",
            Scope::UserInfo => "snsapi_userinfo",
        }
    }
}

/// Who a code, token or ticket belongs to.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user: MockUser,
    pub openid: String,
    pub scope: Scope,
    pub snapshot: bool,
}

#[derive(Debug, Clone)]
struct CodeEntry {
    grant: Grant,
    issued_at: u64,
    used: bool,
}

#[derive(Debug, Clone)]
pub struct AccessEntry {
    pub grant: Grant,
    pub expires_at: u64,
}

#[derive(Debug, Clone)]
pub struct RefreshEntry {
    pub grant: Grant,
    pub expires_at: u64,
    /// The access token last issued for this refresh token.
    pub access_token: String,
}

/// A consent page waiting for 允许 or 拒绝.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub grant: Grant,
    pub redirect_uri: String,
    pub state: String,
    pub created_at: u64,
}

/// What a code exchange found.
#[derive(Debug)]
pub enum CodeUse {
    Fresh(Grant),
    Used,
    Expired,
    Unknown,
}

/// What a token lookup found.
#[derive(Debug)]
pub enum Lookup<T> {
    Valid(T),
    Expired(T),
    Unknown,
}

const TICKET_TTL_SECS: u64 = 600;
/// Prune stale entries every so many inserts, keeping memory bounded under load.
const PRUNE_EVERY: u64 = 4096;
/// Keep expired tokens this long so they answer "expired" rather than "invalid".
const EXPIRED_GRACE_SECS: u64 = 86_400;

#[derive(Debug, Default)]
pub struct Store {
    codes: HashMap<String, CodeEntry>,
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    tickets: HashMap<String, Ticket>,
    inserts: u64,
}

impl Store {
    /// Every code and token issued since the last reset, for tests that check none of them
    /// leaks (`GET /_mock/secrets`). The mock's own control plane; WeChat has no such thing.
    pub fn issued(&self) -> serde_json::Value {
        fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> serde_json::Value {
            let mut v: Vec<&String> = keys.collect();
            v.sort();
            serde_json::json!(v)
        }
        serde_json::json!({
            "codes": sorted(self.codes.keys()),
            "access_tokens": sorted(self.access.keys()),
            "refresh_tokens": sorted(self.refresh.keys()),
        })
    }

    pub fn insert_code(&mut self, grant: Grant, now: u64, code_ttl: u64) -> String {
        let code = new_code();
        self.codes.insert(
            code.clone(),
            CodeEntry {
                grant,
                issued_at: now,
                used: false,
            },
        );
        self.after_insert(now, code_ttl);
        code
    }

    /// Checks and consumes a code in one step.
    pub fn take_code(&mut self, code: &str, now: u64, code_ttl: u64) -> CodeUse {
        let Some(entry) = self.codes.get_mut(code) else {
            return CodeUse::Unknown;
        };
        if entry.used {
            CodeUse::Used
        } else if now >= entry.issued_at + code_ttl {
            CodeUse::Expired
        } else {
            entry.used = true;
            CodeUse::Fresh(entry.grant.clone())
        }
    }

    pub fn insert_access(&mut self, grant: Grant, expires_at: u64) -> String {
        let token = new_token();
        self.access
            .insert(token.clone(), AccessEntry { grant, expires_at });
        token
    }

    pub fn insert_refresh(&mut self, entry: RefreshEntry, now: u64, code_ttl: u64) -> String {
        let token = new_token();
        self.refresh.insert(token.clone(), entry);
        self.after_insert(now, code_ttl);
        token
    }

    pub fn access(&self, token: &str, now: u64) -> Lookup<AccessEntry> {
        match self.access.get(token) {
            None => Lookup::Unknown,
            Some(entry) if now >= entry.expires_at => Lookup::Expired(entry.clone()),
            Some(entry) => Lookup::Valid(entry.clone()),
        }
    }

    pub fn refresh(&self, token: &str, now: u64) -> Lookup<RefreshEntry> {
        match self.refresh.get(token) {
            None => Lookup::Unknown,
            Some(entry) if now >= entry.expires_at => Lookup::Expired(entry.clone()),
            Some(entry) => Lookup::Valid(entry.clone()),
        }
    }

    pub fn extend_access(&mut self, token: &str, expires_at: u64) {
        if let Some(entry) = self.access.get_mut(token) {
            entry.expires_at = expires_at;
        }
    }

    pub fn update_refresh(&mut self, token: &str, access_token: String, expires_at: u64) {
        if let Some(entry) = self.refresh.get_mut(token) {
            entry.access_token = access_token;
            entry.expires_at = expires_at;
        }
    }

    pub fn insert_ticket(&mut self, ticket: Ticket, code_ttl: u64) -> String {
        let id = new_code();
        let now = ticket.created_at;
        self.tickets.insert(id.clone(), ticket);
        self.after_insert(now, code_ttl);
        id
    }

    /// A consent ticket is answered once.
    pub fn take_ticket(&mut self, id: &str, now: u64) -> Option<Ticket> {
        self.tickets
            .remove(id)
            .filter(|ticket| now < ticket.created_at + TICKET_TTL_SECS)
    }

    fn after_insert(&mut self, now: u64, code_ttl: u64) {
        self.inserts += 1;
        if self.inserts % PRUNE_EVERY == 0 {
            self.prune(now, code_ttl);
        }
    }

    fn prune(&mut self, now: u64, code_ttl: u64) {
        self.codes
            .retain(|_, entry| now < entry.issued_at + 2 * code_ttl);
        self.access
            .retain(|_, entry| now < entry.expires_at + EXPIRED_GRACE_SECS);
        self.refresh
            .retain(|_, entry| now < entry.expires_at + EXPIRED_GRACE_SECS);
        self.tickets
            .retain(|_, ticket| now < ticket.created_at + TICKET_TTL_SECS);
    }
}

/// Unix time in seconds, moved forward by `POST /_mock/clock` to test expiry.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        real.saturating_add_signed(self.offset_secs.load(Ordering::Relaxed))
    }

    pub fn advance(&self, secs: i64) -> i64 {
        self.offset_secs.fetch_add(secs, Ordering::Relaxed) + secs
    }

    pub fn offset(&self) -> i64 {
        self.offset_secs.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.offset_secs.store(0, Ordering::Relaxed);
    }
}

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const TOKEN_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// 32 characters of `[0-9A-Za-z]`, starting with `0` like most real codes.
pub fn new_code() -> String {
    format!("0{}", random_from(ALNUM, 31))
}

/// 110 characters: `NN_` and 107 base64url-ish characters, as WeChat's web tokens look.
pub fn new_token() -> String {
    format!("93_{}", random_from(TOKEN_ALPHABET, 107))
}

/// Random `[0-9A-Za-z]` text, for request ids in errmsg suffixes.
pub fn random_alnum(len: usize) -> String {
    random_from(ALNUM, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            user: MockUser::Fixture(&crate::mock::USERS[0]),
            openid: "o1".into(),
            scope: Scope::Base,
            snapshot: false,
        }
    }

    #[test]
    fn codes_and_tokens_have_wechat_shapes() {
        let code = new_code();
        assert_eq!(code.len(), 32);
        assert!(code.chars().all(|c| c.is_ascii_alphanumeric()));
        let token = new_token();
        assert_eq!(token.len(), 110);
        assert!(token.starts_with("93_"));
    }

    #[test]
    fn a_code_is_used_once_and_expires_after_its_ttl() {
        let mut store = Store::default();
        let code = store.insert_code(grant(), 1000, 300);
        assert!(matches!(
            store.take_code(&code, 1001, 300),
            CodeUse::Fresh(_)
        ));
        assert!(matches!(store.take_code(&code, 1002, 300), CodeUse::Used));
        let late = store.insert_code(grant(), 1000, 300);
        assert!(matches!(
            store.take_code(&late, 1300, 300),
            CodeUse::Expired
        ));
        assert!(matches!(
            store.take_code("nope", 1000, 300),
            CodeUse::Unknown
        ));
    }

    #[test]
    fn expired_tokens_still_answer_expired_and_tickets_are_single_use() {
        let mut store = Store::default();
        let token = store.insert_access(grant(), 2000);
        assert!(matches!(store.access(&token, 1999), Lookup::Valid(_)));
        assert!(matches!(store.access(&token, 2000), Lookup::Expired(_)));
        let ticket = Ticket {
            grant: grant(),
            redirect_uri: "http://x/".into(),
            state: String::new(),
            created_at: 10,
        };
        let id = store.insert_ticket(ticket, 300);
        assert!(store.take_ticket(&id, 11).is_some());
        assert!(store.take_ticket(&id, 11).is_none());
    }
}
