//! States that a callback has already used. The state cookie is stateless, so a copy of it
//! taken before the callback would still hold the state afterwards; this process remembers
//! each used state for as long as any cookie could carry it ([`STATE_TTL`]) and refuses it a
//! second time. The memory is bounded: when full of live entries, callbacks are refused
//! (503) rather than forgetting a state early.
//!
//! Each entry is a 64-bit digest of the state and the second it was used, 17 bytes in the
//! map's table (which grows by doubling): full, the set takes about 72 MB, and it holds ten
//! minutes of the login rate the gateway sustains (issue 7: 3 000/s). At 100 000 string
//! entries, a burst of logins at that rate filled it in half a minute and had logins refused
//! for the next ten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::state::STATE_TTL;

/// Used states kept at once: ten minutes of logins at over 3 000 per second.
const CAPACITY: usize = 2_000_000;
/// A full set is swept for expired entries at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What [`UsedStates::consume`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateUse {
    /// Never used before: go on with the login.
    First,
    /// Used before: a replay, or the browser's second load of the callback.
    Replayed,
    /// Too many logins in the last ten minutes to remember another one.
    Full,
}

pub struct UsedStates {
    /// Whole seconds; a state is remembered for at least this long.
    ttl: u32,
    capacity: usize,
    /// What the seconds of the entries count from.
    base: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Digest of the state → the second (since `base`) it was used.
    used: HashMap<u64, u32>,
    last_sweep: Option<Instant>,
}

/// The state's SHA-256, cut to 64 bits. Two of two million live states share it with odds of
/// one in ten million, and then a login is refused as a replay; nobody can aim a collision at
/// a state, which is secret until its callback.
fn digest(state: &str) -> u64 {
    let hash = Sha256::digest(state.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

impl Default for UsedStates {
    fn default() -> Self {
        Self::new(STATE_TTL, CAPACITY)
    }
}

impl UsedStates {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        UsedStates {
            ttl: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            capacity: capacity.max(1),
            base: Instant::now(),
            inner: Mutex::new(Inner {
                used: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Marks `state` used; says whether it was already.
    pub fn consume(&self, state: &str) -> StateUse {
        self.consume_at(state, Instant::now())
    }

    fn consume_at(&self, state: &str, now: Instant) -> StateUse {
        let key = digest(state);
        let second =
            u32::try_from(now.saturating_duration_since(self.base).as_secs()).unwrap_or(u32::MAX);
        // In whole seconds, a state used in second `at` is live while `second - at <= ttl`:
        // remembered for at least `ttl`, at most a second longer.
        let ttl = self.ttl;
        let live = |at: u32| second.saturating_sub(at) <= ttl;
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = inner.used.get(&key) {
            if live(*at) {
                return StateUse::Replayed;
            }
        }
        if inner.used.len() >= self.capacity && !inner.used.contains_key(&key) {
            let due = inner
                .last_sweep
                .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_EVERY);
            if due {
                inner.last_sweep = Some(now);
                inner.used.retain(|_, at| live(*at));
            }
            if inner.used.len() >= self.capacity {
                return StateUse::Full;
            }
        }
        inner.used.insert(key, second);
        StateUse::First
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_used_once_for_as_long_as_a_cookie_can_carry_it() {
        let used = UsedStates::new(Duration::from_secs(600), 10);
        let now = Instant::now();
        assert_eq!(used.consume_at("s1", now), StateUse::First);
        assert_eq!(used.consume_at("s1", now), StateUse::Replayed);
        assert_eq!(
            used.consume_at("s1", now + Duration::from_secs(599)),
            StateUse::Replayed
        );
        assert_eq!(used.consume_at("s2", now), StateUse::First);
    }

    #[test]
    fn a_burst_of_logins_far_beyond_the_old_limit_is_not_refused() {
        // Half a minute at 10 000 logins/s, as the bench drives them.
        let used = UsedStates::default();
        let now = Instant::now();
        for i in 0..300_000 {
            assert_eq!(used.consume_at(&format!("state-{i}"), now), StateUse::First);
        }
        assert_eq!(used.consume_at("state-7", now), StateUse::Replayed);
    }

    #[test]
    fn a_full_set_refuses_until_entries_expire() {
        let used = UsedStates::new(Duration::from_secs(600), 2);
        let now = Instant::now();
        assert_eq!(used.consume_at("a", now), StateUse::First);
        assert_eq!(used.consume_at("b", now), StateUse::First);
        assert_eq!(used.consume_at("c", now), StateUse::Full);
        // Still remembered while full: a replay is a replay, not "full".
        assert_eq!(used.consume_at("a", now), StateUse::Replayed);
        let later = now + Duration::from_secs(601);
        assert_eq!(used.consume_at("c", later), StateUse::First);
        assert_eq!(used.consume_at("c", later), StateUse::Replayed);
    }
}
