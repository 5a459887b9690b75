//! One callback, one code exchange. WeChat's webviews load the callback twice, sometimes at
//! the same moment, and behind a balancer the two loads may reach two gateways. The first
//! load of a state claims it and exchanges the code; a later load of the same callback waits
//! for the first's outcome and answers the same: the same redirect and the same session, or
//! the same failure. The claim is also the used-state record: a state is claimed once for as
//! long as a cookie can carry it ([`STATE_TTL`]), so a replayed state is refused everywhere.
//!
//! Where the claims live: in the session store's shared values when it has them (Redis:
//! every gateway sees every claim), else in this process (memory and redb stores). Either
//! way they belong to the gateway's lasting state, so a reload forgets none.
//!
//! The outcome carries the new session's cookie value, so it is sealed (AES-256-GCM) under a
//! key derived from `session.secret`, the state and the code: only a load of the very same
//! callback URL opens it (a replay with another code for the state does not), and a dump of
//! the store yields no session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::replay::{StateUse, UsedStates};
use super::state::STATE_TTL;
use crate::session::{SharedValues, StoreError};

/// How long a finished callback's outcome is handed to a later load of the same URL.
/// WeChat's second load comes within seconds; a copy of the URL replayed later gets the page
/// without a session.
pub const OUTCOME_WINDOW: Duration = Duration::from_secs(120);
/// How often a load waiting on another gateway's exchange looks at the store again.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Outcomes kept in process at once (the memory and redb stores): two minutes of logins at
/// over 3 000 per second; beyond it a second load gets the page without the session.
const LOCAL_CAPACITY: usize = 400_000;

const PENDING: u8 = b'p';
const SETTLED: u8 = b'd';

/// What the first load of a callback came to, as every later load of it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Logged in: the session cookie's value and the page to go to.
    Landed { cookie: String, url: String },
    /// The login failed; the later load shows the same page.
    Failed(Failure),
}

/// Why a callback failed, as its page tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    Declined,
    BadCode,
    WeChatTimeout,
    WeChatUnavailable,
    WeChatError,
    Store,
}

/// What a load of a callback found on claiming its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The first load: exchange the code, then [`Flights::settle`].
    First,
    /// An earlier load of this same callback finished within [`OUTCOME_WINDOW`].
    Settled(Outcome),
    /// The state was used by a callback with another code: a replay.
    Replayed,
    /// Used by this same callback, but its outcome is gone (older than the window) or its
    /// first load never finished (a gateway died mid-exchange).
    Spent,
    /// Too many logins in flight to remember another one (in process only).
    Full,
}

/// The key that seals one callback's outcome: `session.secret`'s share, the state, the code.
pub struct FlightKey([u8; 32]);

impl FlightKey {
    /// The gateway's share, derived from `session.secret` (its own label: no other key
    /// derived from the secret equals it).
    pub fn derive(secret: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"wxgate/login-flight/v1\0")
            .chain_update(secret)
            .finalize();
        FlightKey(digest.into())
    }

    fn for_callback(&self, state: &str, code: &str) -> Option<LessSafeKey> {
        let digest = Sha256::new()
            .chain_update(self.0)
            .chain_update(state.as_bytes())
            .chain_update([0])
            .chain_update(code.as_bytes())
            .finalize();
        UnboundKey::new(&AES_256_GCM, &digest)
            .ok()
            .map(LessSafeKey::new)
    }
}

impl std::fmt::Debug for FlightKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlightKey(..)")
    }
}

/// The name a state's claim goes by: a digest, so the store never holds a live state.
fn name_of(state: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"wxgate/state\0")
        .chain_update(state.as_bytes())
        .finalize();
    format!("f:{}", hex::encode(&digest[..16]))
}

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(0)
}

fn pending_value(deadline: SystemTime) -> Vec<u8> {
    let mut v = vec![PENDING];
    v.extend_from_slice(&unix_ms(deadline).to_be_bytes());
    v
}

fn read_ms(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?))
}

/// Seals `outcome` for the callback `(state, code)`: the settled marker, the time, the
/// nonce, the sealed JSON.
fn seal(key: &FlightKey, state: &str, code: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let aead = key.for_callback(state, code)?;
    let mut plain = serde_json::to_vec(outcome).ok()?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut plain,
    )
    .ok()?;
    let mut v = vec![SETTLED];
    v.extend_from_slice(&unix_ms(SystemTime::now()).to_be_bytes());
    v.extend_from_slice(&nonce);
    v.extend_from_slice(&plain);
    Some(v)
}

/// What a stored value says to a load of `(state, code)`.
enum Seen {
    Pending { deadline_ms: u64 },
    Settled(Claim),
}

fn judge(value: &[u8], key: &FlightKey, state: &str, code: &str) -> Seen {
    match value.first() {
        Some(&PENDING) => Seen::Pending {
            deadline_ms: read_ms(value).unwrap_or(0),
        },
        Some(&SETTLED) => Seen::Settled(open(value, key, state, code)),
        // A used state the process remembers without its outcome.
        _ => Seen::Settled(Claim::Spent),
    }
}

fn open(value: &[u8], key: &FlightKey, state: &str, code: &str) -> Claim {
    let (Some(at), Some(nonce), Some(sealed)) = (
        read_ms(value),
        value.get(9..9 + NONCE_LEN),
        value.get(9 + NONCE_LEN..),
    ) else {
        return Claim::Spent;
    };
    let Some(aead) = key.for_callback(state, code) else {
        return Claim::Spent;
    };
    let Ok(nonce) = Nonce::try_assume_unique_for_key(nonce) else {
        return Claim::Spent;
    };
    let mut sealed = sealed.to_vec();
    let Ok(plain) = aead.open_in_place(nonce, Aad::empty(), &mut sealed) else {
        // Another code for this state (or another secret): not this callback's outcome.
        return Claim::Replayed;
    };
    let fresh = unix_ms(SystemTime::now()).saturating_sub(at) < OUTCOME_WINDOW.as_millis() as u64;
    match serde_json::from_slice::<Outcome>(plain) {
        Ok(outcome) if fresh => Claim::Settled(outcome),
        _ => Claim::Spent,
    }
}

/// The claims of this process, for stores no other gateway shares: the compact used-state
/// set for the full state lifetime, and the outcomes for the window.
struct Local {
    used: UsedStates,
    outcomes: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
}

impl Local {
    fn claim(&self, name: &str, pending: Vec<u8>) -> Result<Option<Vec<u8>>, ()> {
        match self.used.consume(name) {
            StateUse::First => {
                self.store(name, pending);
                Ok(None)
            }
            StateUse::Replayed => Ok(Some(self.get(name).unwrap_or_default())),
            StateUse::Full => Err(()),
        }
    }

    fn store(&self, name: &str, value: Vec<u8>) {
        let mut outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if outcomes.len() >= LOCAL_CAPACITY {
            outcomes.retain(|_, (until, _)| *until > now);
        }
        if outcomes.len() < LOCAL_CAPACITY || outcomes.contains_key(name) {
            outcomes.insert(name.to_owned(), (now + OUTCOME_WINDOW, value));
        }
    }

    fn get(&self, name: &str) -> Option<Vec<u8>> {
        let outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outcomes
            .get(name)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }
}

/// Every callback in flight or recently finished; lives as long as the gateway.
pub struct Flights {
    local: Local,
    /// Wakes loads waiting on this process's own exchanges at once (others poll).
    settled: Notify,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            local: Local {
                used: UsedStates::default(),
                outcomes: Mutex::new(HashMap::new()),
            },
            settled: Notify::new(),
        }
    }
}

impl Flights {
    /// Claims the callback `(state, code)`. When another load holds it, waits for that load's
    /// outcome, at most `patience` (what the exchange may take).
    pub async fn claim(
        &self,
        shared: Option<&dyn SharedValues>,
        key: &FlightKey,
        state: &str,
        code: &str,
        patience: Duration,
    ) -> Result<Claim, StoreError> {
        let name = name_of(state);
        let pending = pending_value(SystemTime::now() + patience);
        let held = match shared {
            Some(values) => values.set_if_absent(&name, &pending, STATE_TTL).await?,
            None => match self.local.claim(&name, pending) {
                Ok(held) => held,
                Err(()) => return Ok(Claim::Full),
            },
        };
        let Some(mut value) = held else {
            return Ok(Claim::First);
        };
        let give_up = Instant::now() + patience;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match judge(&value, key, state, code) {
                Seen::Settled(claim) => return Ok(claim),
                Seen::Pending { deadline_ms } => {
                    if Instant::now() >= give_up
                        || unix_ms(SystemTime::now()) > deadline_ms.saturating_add(1_000)
                    {
                        return Ok(Claim::Spent);
                    }
                }
            }
            let _ = tokio::time::timeout(POLL_EVERY, notified).await;
            let next = match shared {
                Some(values) => values.get(&name).await?,
                None => self.local.get(&name),
            };
            // Gone from the store: the claim expired with the state, nothing to wait for.
            let Some(next) = next else {
                return Ok(Claim::Spent);
            };
            value = next;
        }
    }

    /// Records the first load's outcome and wakes the loads waiting for it. A failure to
    /// record leaves the claim in place: waiting loads give up at its deadline.
    pub async fn settle(
        &self,
        shared: Option<&dyn SharedValues>,
        key: &FlightKey,
        state: &str,
        code: &str,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let name = name_of(state);
        let Some(value) = seal(key, state, code, outcome) else {
            return Err(StoreError::Corrupt(
                "login outcome could not be sealed".into(),
            ));
        };
        let result = match shared {
            // Kept as long as the state could come back, so it stays refused.
            Some(values) => values.set(&name, &value, STATE_TTL).await,
            None => {
                self.local.store(&name, value);
                Ok(())
            }
        };
        self.settled.notify_waiters();
        result
    }

    /// The outcome of callback `(state, code)` if it landed within the window: what the
    /// second load of a browser that already holds the updated state cookie gets.
    pub async fn landed(
        &self,
        shared: Option<&dyn SharedValues>,
        key: &FlightKey,
        state: &str,
        code: &str,
    ) -> Result<Option<Outcome>, StoreError> {
        let name = name_of(state);
        let value = match shared {
            Some(values) => values.get(&name).await?,
            None => self.local.get(&name),
        };
        Ok(value.and_then(|v| match judge(&v, key, state, code) {
            Seen::Settled(Claim::Settled(outcome)) => Some(outcome),
            _ => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn landed() -> Outcome {
        Outcome::Landed {
            cookie: "cookie-value".into(),
            url: "/page".into(),
        }
    }

    #[tokio::test]
    async fn the_second_load_of_one_callback_waits_for_and_gets_the_first_outcome() {
        let flights = Arc::new(Flights::default());
        let key = Arc::new(FlightKey::derive(b"0123456789abcdef0123456789abcdef"));
        let patience = Duration::from_secs(5);
        assert_eq!(
            flights
                .claim(None, &key, "s1", "c1", patience)
                .await
                .unwrap(),
            Claim::First
        );
        let (f, k) = (flights.clone(), key.clone());
        let waiter = tokio::spawn(async move { f.claim(None, &k, "s1", "c1", patience).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second load waits");
        flights
            .settle(None, &key, "s1", "c1", &landed())
            .await
            .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), Claim::Settled(landed()));
        // A replay of the state with another code is not this callback.
        assert_eq!(
            flights
                .claim(None, &key, "s1", "c2", patience)
                .await
                .unwrap(),
            Claim::Replayed
        );
        assert_eq!(
            flights.landed(None, &key, "s1", "c1").await.unwrap(),
            Some(landed())
        );
        assert_eq!(flights.landed(None, &key, "s1", "c2").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_first_load_that_never_finishes_releases_its_waiters_at_its_deadline() {
        let flights = Flights::default();
        let key = FlightKey::derive(b"0123456789abcdef0123456789abcdef");
        let short = Duration::from_millis(100);
        assert_eq!(
            flights.claim(None, &key, "s", "c", short).await.unwrap(),
            Claim::First
        );
        assert_eq!(
            flights.claim(None, &key, "s", "c", short).await.unwrap(),
            Claim::Spent
        );
    }

    #[test]
    fn the_store_never_sees_the_state_or_the_session() {
        let key = FlightKey::derive(b"0123456789abcdef0123456789abcdef");
        let name = name_of("statestatestate");
        assert!(!name.contains("statestatestate"));
        let sealed = seal(&key, "statestatestate", "code", &landed()).unwrap();
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("cookie-value") && !text.contains("/page"));
        let other = FlightKey::derive(b"another secret of thirty-two bytes!");
        assert_eq!(
            open(&sealed, &other, "statestatestate", "code"),
            Claim::Replayed
        );
    }
}
