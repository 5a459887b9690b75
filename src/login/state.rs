//! The pending-login cookie: which `state` values this browser was sent to WeChat with,
//! and where each login should land. Several logins (tabs) can be pending at once; all of
//! them live in one cookie, encrypted and authenticated with the `cookie` crate's private jar.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cookie::{Cookie, CookieJar, Key};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cookies::CookieSpec;
use super::return_url::ReturnUrl;
use super::scope::AuthScope;

/// Length of a state value: 32 alphanumerics ≈ 190 bits, well under WeChat's 128-byte cap.
pub const STATE_LEN: usize = 32;
/// How long a login may take between the redirect to WeChat and the callback.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Pending logins kept per browser; starting one more drops the oldest.
pub const MAX_PENDING: usize = 8;

/// Clock skew tolerated for entries stamped in the future (several gateways, one cookie).
const FUTURE_SKEW_SECS: u64 = 60;
/// Largest sealed cookie value written; browsers drop cookies above ~4096 bytes including
/// name and attributes. Values read back above twice this are not even decrypted.
const MAX_SEALED_LEN: usize = 3800;
/// Associated data for the AEAD, fixed so that the configured cookie name may change freely.
const SEAL_NAME: &str = "wxgate-login-state";
/// Domain separation: the state key must differ from any key derived from the same secret
/// for the session cookie.
const KEY_LABEL: &[u8] = b"wxgate/login-state-cookie/v1\0";

/// Refusals when building the state key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("session.secret must be at least 32 bytes to key the login-state cookie")]
    SecretTooShort,
}

/// Encryption key of the state cookie, derived from `session.secret`.
pub struct StateKey(Key);

impl StateKey {
    /// Derives the key; refuses secrets shorter than 32 bytes (which `Key::derive_from`
    /// would panic on).
    pub fn derive(session_secret: &[u8]) -> Result<Self, StateError> {
        if session_secret.len() < 32 {
            return Err(StateError::SecretTooShort);
        }
        let master = Sha256::new()
            .chain_update(KEY_LABEL)
            .chain_update(session_secret)
            .finalize();
        Ok(StateKey(Key::derive_from(&master)))
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey(<redacted>)")
    }
}

/// A login waiting for WeChat's callback, handed back by [`PendingLogins::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub return_url: ReturnUrl,
    pub scope: AuthScope,
    /// Unix seconds when the login started.
    pub created: u64,
}

struct Entry {
    state: String,
    pending: Pending,
}

/// The pending logins of one browser, oldest first.
#[derive(Default)]
pub struct PendingLogins {
    entries: Vec<Entry>,
}

/// Wire form of one entry: `[state, return_url, scope tag, created]`.
type WireEntry = (String, String, u8, u64);

impl PendingLogins {
    /// Reads the cookie. Anything wrong with it — missing, tampered, truncated, oversized,
    /// sealed under another key, unparsable — yields no pending logins; expired entries are
    /// dropped. Never an error: the callback then reports "login expired, try again".
    pub fn from_cookie(key: &StateKey, cookie_value: Option<&str>, now: SystemTime) -> Self {
        let entries = cookie_value
            .and_then(|value| unseal(key, value))
            .map(|plain| parse_entries(&plain))
            .unwrap_or_default();
        let mut logins = PendingLogins { entries };
        logins.forget_expired(unix_secs(now));
        logins.enforce_capacity();
        logins
    }

    /// Starts a login: returns the new random `state` to send to WeChat.
    pub fn begin(&mut self, return_url: ReturnUrl, scope: AuthScope, now: SystemTime) -> String {
        let created = unix_secs(now);
        self.forget_expired(created);
        let state = new_state();
        self.entries.push(Entry {
            state: state.clone(),
            pending: Pending {
                return_url,
                scope,
                created,
            },
        });
        self.enforce_capacity();
        state
    }

    /// Consumes the login started with `state`, if it is pending and younger than
    /// [`STATE_TTL`]. A second call with the same state returns `None`.
    pub fn take(&mut self, state: &str, now: SystemTime) -> Option<Pending> {
        self.forget_expired(unix_secs(now));
        let mut found = None;
        // Every entry is compared, in constant time per entry, so timing reveals nothing
        // about how close a guess came.
        for (index, entry) in self.entries.iter().enumerate() {
            let equal = bool::from(entry.state.as_bytes().ct_eq(state.as_bytes()));
            if equal && found.is_none() {
                found = Some(index);
            }
        }
        found.map(|index| self.entries.remove(index).pending)
    }

    /// Gives the pending login `state` the page's `#fragment`, which only the browser knows
    /// (the hash hop page reports it); returns the login's scope, or `None` when this
    /// browser holds no such login.
    pub fn add_fragment(
        &mut self,
        state: &str,
        fragment: &str,
        now: SystemTime,
    ) -> Option<AuthScope> {
        self.forget_expired(unix_secs(now));
        let mut found = None;
        for (index, entry) in self.entries.iter().enumerate() {
            let equal = bool::from(entry.state.as_bytes().ct_eq(state.as_bytes()));
            if equal && found.is_none() {
                found = Some(index);
            }
        }
        let entry = self.entries.get_mut(found?)?;
        let url = entry.pending.return_url.clone();
        entry.pending.return_url = url.with_fragment(fragment);
        Some(entry.pending.scope)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `Set-Cookie` to send, shaped by `spec` (HttpOnly, SameSite=Lax so it comes back on
    /// WeChat's top-level 302 to the callback, `Path=/` so every tab's login start sees the
    /// logins already pending), Max-Age 600; a removal cookie when empty. If the sealed value
    /// would exceed the browser's size limit, the oldest logins go first.
    pub fn to_cookie(&self, key: &StateKey, spec: &CookieSpec) -> Cookie<'static> {
        let sealed = self
            .plaintext_that_fits()
            .and_then(|plain| seal(key, plain));
        match sealed {
            Some(value) => {
                let mut cookie = spec.build(value);
                cookie.set_max_age(cookie::time::Duration::seconds(STATE_TTL.as_secs() as i64));
                cookie
            }
            None => spec.removal(),
        }
    }

    /// Serialises the newest entries whose sealed form stays under [`MAX_SEALED_LEN`].
    fn plaintext_that_fits(&self) -> Option<String> {
        (0..self.entries.len())
            .map(|first| serialise(&self.entries[first..]))
            .find(|plain| sealed_len(plain.len()) <= MAX_SEALED_LEN)
    }

    fn forget_expired(&mut self, now: u64) {
        self.entries.retain(|e| is_live(e.pending.created, now));
    }

    fn enforce_capacity(&mut self) {
        let excess = self.entries.len().saturating_sub(MAX_PENDING);
        self.entries.drain(..excess);
    }
}

impl fmt::Debug for PendingLogins {
    // The state values are CSRF tokens: count only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogins")
            .field("pending", &self.entries.len())
            .finish()
    }
}

fn new_state() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(STATE_LEN)
        .map(char::from)
        .collect()
}

/// Whether `s` has the shape of a state this module issues.
pub fn is_well_formed_state(s: &str) -> bool {
    s.len() == STATE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_live(created: u64, now: u64) -> bool {
    let not_too_old = now.saturating_sub(created) < STATE_TTL.as_secs();
    let not_from_future = created <= now.saturating_add(FUTURE_SKEW_SECS);
    not_too_old && not_from_future
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn serialise(entries: &[Entry]) -> String {
    let wire: Vec<(&str, &str, u8, u64)> = entries
        .iter()
        .map(|e| {
            (
                e.state.as_str(),
                e.pending.return_url.as_str(),
                e.pending.scope.to_wire(),
                e.pending.created,
            )
        })
        .collect();
    // Serialising strings and integers into JSON cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

fn parse_entries(plain: &str) -> Vec<Entry> {
    let wire: Vec<WireEntry> = serde_json::from_str(plain).unwrap_or_default();
    wire.into_iter().filter_map(entry_from_wire).collect()
}

fn entry_from_wire((state, url, scope, created): WireEntry) -> Option<Entry> {
    if !is_well_formed_state(&state) {
        return None;
    }
    Some(Entry {
        state,
        pending: Pending {
            return_url: ReturnUrl::from_sealed(url)?,
            scope: AuthScope::from_wire(scope)?,
            created,
        },
    })
}

/// Length of the base64 of `nonce | ciphertext | tag` for a plaintext of `plain_len` bytes.
fn sealed_len(plain_len: usize) -> usize {
    (12 + plain_len + 16).div_ceil(3) * 4
}

fn seal(key: &StateKey, plain: String) -> Option<String> {
    let mut jar = CookieJar::new();
    jar.private_mut(&key.0).add(Cookie::new(SEAL_NAME, plain));
    jar.get(SEAL_NAME).map(|c| c.value().to_owned())
}

fn unseal(key: &StateKey, value: &str) -> Option<String> {
    if value.is_empty() || value.len() > 2 * MAX_SEALED_LEN {
        return None;
    }
    let jar = CookieJar::new();
    jar.private(&key.0)
        .decrypt(Cookie::new(SEAL_NAME, value.to_owned()))
        .map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::collections::HashSet;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
    const NAME: &str = "wxgate_state";

    fn spec(secure: bool) -> CookieSpec {
        CookieSpec::new(NAME, secure, None)
    }

    fn key() -> StateKey {
        StateKey::derive(SECRET).unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn url(s: &str) -> ReturnUrl {
        ReturnUrl::from_request_target(s).unwrap()
    }

    /// Writes the cookie and reads it back as the next request would.
    fn round_trip(logins: &PendingLogins, now: SystemTime) -> PendingLogins {
        let cookie = logins.to_cookie(&key(), &spec(true));
        PendingLogins::from_cookie(&key(), Some(cookie.value()), now)
    }

    #[test]
    fn a_login_survives_the_round_trip_through_the_cookie() {
        let mut logins = PendingLogins::default();
        let target = "/activity/a.html?from=singlemessage&isappinstalled=0";
        let state = logins.begin(url(target), AuthScope::UserInfo, t(0));
        let mut read = round_trip(&logins, t(5));
        let pending = read.take(&state, t(5)).expect("pending login");
        assert_eq!(pending.return_url.as_str(), target);
        assert_eq!(pending.scope, AuthScope::UserInfo);
        assert_eq!(pending.created, 1_700_000_000);
    }

    #[test]
    fn parallel_logins_in_several_tabs_all_complete_in_any_order() {
        let mut logins = PendingLogins::default();
        let states: Vec<(String, String)> = (0..5)
            .map(|i| {
                let target = format!("/tab/{i}?x={i}");
                let scope = if i % 2 == 0 {
                    AuthScope::Base
                } else {
                    AuthScope::UserInfo
                };
                (logins.begin(url(&target), scope, t(i)), target)
            })
            .collect();
        let mut read = round_trip(&logins, t(10));
        for (state, target) in states.iter().rev() {
            let pending = read.take(state, t(10)).expect("each tab finds its login");
            assert_eq!(&pending.return_url.as_str(), target);
            // Each later request re-reads the cookie the previous callback rewrote.
            read = round_trip(&read, t(10));
        }
        assert!(read.is_empty());
    }

    #[test]
    fn take_consumes_the_state() {
        let mut logins = PendingLogins::default();
        let state = logins.begin(url("/x"), AuthScope::Base, t(0));
        assert!(logins.take(&state, t(1)).is_some());
        assert!(logins.take(&state, t(1)).is_none());
        let cookie = logins.to_cookie(&key(), &spec(true));
        assert!(PendingLogins::from_cookie(&key(), Some(cookie.value()), t(1)).is_empty());
    }

    #[test]
    fn unknown_or_malformed_states_find_nothing() {
        let mut logins = PendingLogins::default();
        let state = logins.begin(url("/x"), AuthScope::Base, t(0));
        let mut wrong = state.clone();
        wrong.replace_range(..1, if state.starts_with('a') { "b" } else { "a" });
        for guess in [&wrong[..], "", &state[..31], &format!("{state}x"), "ab-_cd"] {
            assert!(logins.take(guess, t(1)).is_none(), "{guess:?}");
        }
        assert!(logins.take(&state, t(1)).is_some());
    }

    #[test]
    fn logins_expire_after_ten_minutes() {
        let mut logins = PendingLogins::default();
        let old = logins.begin(url("/old"), AuthScope::Base, t(0));
        let fresh = logins.begin(url("/fresh"), AuthScope::Base, t(300));
        let mut read = round_trip(&logins, t(599));
        assert!(
            read.take(&old, t(599)).is_some(),
            "still valid just under 10 min"
        );
        let mut read = round_trip(&logins, t(600));
        assert!(read.take(&old, t(600)).is_none(), "gone at 10 min");
        assert!(read.take(&fresh, t(600)).is_some());
        let mut read = round_trip(&logins, t(900));
        assert!(read.take(&fresh, t(900)).is_none());
    }

    #[test]
    fn entries_from_the_far_future_are_dropped() {
        let mut logins = PendingLogins::default();
        let state = logins.begin(url("/x"), AuthScope::Base, t(3600));
        assert!(round_trip(&logins, t(0)).take(&state, t(0)).is_none());
    }

    #[test]
    fn damaged_or_foreign_cookies_read_as_no_pending_login() {
        let mut logins = PendingLogins::default();
        logins.begin(url("/x"), AuthScope::Base, t(0));
        let good = logins.to_cookie(&key(), &spec(true)).value().to_owned();
        let other_key = StateKey::derive(b"another-secret-of-at-least-32-bytes!!").unwrap();
        let foreign = logins.to_cookie(&other_key, &spec(true)).value().to_owned();
        let mut flipped = good.clone().into_bytes();
        flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let cases: Vec<(&str, String)> = vec![
            ("missing", String::new()),
            ("other key", foreign),
            ("one byte flipped", flipped),
            ("truncated", good[..good.len() - 4].to_owned()),
            ("first half", good[..good.len() / 2].to_owned()),
            ("extended", format!("{good}AAAA")),
            ("garbage", "not base64 at all!".to_owned()),
            (
                "plain json",
                r#"[["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","/x",0,1700000000]]"#.to_owned(),
            ),
            ("short base64", "AAAA".to_owned()),
            ("oversized", "A".repeat(64 * 1024)),
            ("non-ascii", "状态🍪".to_owned()),
        ];
        for (label, value) in &cases {
            let read = PendingLogins::from_cookie(&key(), Some(value), t(1));
            assert!(read.is_empty(), "{label}");
        }
        assert!(PendingLogins::from_cookie(&key(), None, t(1)).is_empty());
        assert_eq!(
            PendingLogins::from_cookie(&key(), Some(&good), t(1)).len(),
            1
        );
    }

    #[test]
    fn sealed_nonsense_with_a_valid_key_is_still_empty() {
        // Authentic but not our format: must not panic or produce entries.
        for plain in [
            "",
            "{}",
            "[1,2,3]",
            r#"[["short","/x",0,1700000000]]"#,
            r#"[["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","//evil.com",0,1700000000]]"#,
            r#"[["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","/x",7,1700000000]]"#,
        ] {
            let sealed = seal(&key(), plain.to_owned()).unwrap();
            assert!(
                PendingLogins::from_cookie(&key(), Some(&sealed), t(1)).is_empty(),
                "{plain}"
            );
        }
    }

    #[test]
    fn at_most_eight_logins_are_pending_and_the_oldest_go_first() {
        let mut logins = PendingLogins::default();
        let states: Vec<String> = (0..12)
            .map(|i| logins.begin(url(&format!("/p{i}")), AuthScope::Base, t(i)))
            .collect();
        assert_eq!(logins.len(), MAX_PENDING);
        let mut read = round_trip(&logins, t(20));
        assert_eq!(read.len(), MAX_PENDING);
        for (i, state) in states.iter().enumerate() {
            assert_eq!(read.take(state, t(20)).is_some(), i >= 4, "login {i}");
        }
    }

    #[test]
    fn cookie_stays_under_browser_limits_with_long_return_urls() {
        let mut logins = PendingLogins::default();
        let long = format!("/p?{}", "q".repeat(crate::login::return_url::MAX_LEN - 3));
        let mut newest = String::new();
        for i in 0..MAX_PENDING {
            newest = logins.begin(url(&long), AuthScope::Base, t(i as u64));
        }
        let cookie = logins.to_cookie(&key(), &spec(true));
        assert!(
            cookie.to_string().len() < 4096,
            "{} bytes",
            cookie.to_string().len()
        );
        let mut read = PendingLogins::from_cookie(&key(), Some(cookie.value()), t(10));
        assert!(
            read.take(&newest, t(10)).is_some(),
            "the newest login always fits"
        );
    }

    #[test]
    fn cookie_hides_state_and_return_url() {
        let mut logins = PendingLogins::default();
        let target = "/secret-campaign/page.html?from=singlemessage";
        let state = logins.begin(url(target), AuthScope::UserInfo, t(0));
        let header = logins.to_cookie(&key(), &spec(true)).to_string();
        let value = logins.to_cookie(&key(), &spec(true)).value().to_owned();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&value)
            .unwrap();
        for needle in [state.as_str(), target, "secret-campaign", "snsapi"] {
            assert!(!header.contains(needle), "{needle} in clear");
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in clear"
            );
        }
    }

    #[test]
    fn cookie_attributes_follow_the_spec_with_a_ten_minute_life() {
        let mut logins = PendingLogins::default();
        logins.begin(url("/x"), AuthScope::Base, t(0));
        let cookie = logins.to_cookie(&key(), &spec(true));
        assert_eq!(cookie.name(), "__Host-wxgate_state");
        assert_eq!(cookie.path(), Some("/"));
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax));
        assert_eq!(cookie.max_age(), Some(cookie::time::Duration::seconds(600)));
        assert_eq!(cookie.domain(), None);
        assert_eq!(logins.to_cookie(&key(), &spec(false)).secure(), Some(false));
    }

    #[test]
    fn an_empty_set_writes_a_removal_cookie() {
        let logins = PendingLogins::default();
        let cookie = logins.to_cookie(&key(), &spec(true));
        assert_eq!(cookie.value(), "");
        assert_eq!(cookie.max_age(), Some(cookie::time::Duration::ZERO));
        assert_eq!(cookie.path(), Some("/"));
        let header = cookie.to_string();
        assert!(header.contains("Max-Age=0"), "{header}");
    }

    #[test]
    fn states_are_32_alphanumerics_and_unique() {
        let mut logins = PendingLogins::default();
        let mut seen = HashSet::new();
        for i in 0..2000 {
            let state = logins.begin(url("/x"), AuthScope::Base, t(i % 500));
            assert_eq!(state.len(), STATE_LEN);
            assert!(state.bytes().all(|b| b.is_ascii_alphanumeric()), "{state}");
            assert!(is_well_formed_state(&state));
            assert!(seen.insert(state), "duplicate state");
        }
    }

    #[test]
    fn key_needs_32_bytes_and_is_distinct_from_a_plain_derivation() {
        assert_eq!(
            StateKey::derive(&[7; 31]).unwrap_err(),
            StateError::SecretTooShort
        );
        assert!(StateKey::derive(&[7; 32]).is_ok());
        // A session module deriving straight from the secret must not get the same key.
        let plain = Key::derive_from(SECRET);
        assert_ne!(plain.master(), key().0.master());
        assert_eq!(
            key().0.master(),
            key().0.master(),
            "derivation is deterministic"
        );
    }

    #[test]
    fn debug_output_reveals_no_state_or_key() {
        let mut logins = PendingLogins::default();
        let state = logins.begin(url("/x"), AuthScope::Base, t(0));
        assert!(!format!("{logins:?}").contains(&state));
        assert_eq!(format!("{:?}", key()), "StateKey(<redacted>)");
    }
}
