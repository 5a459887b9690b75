//! States that a callback has already used. The state cookie is stateless, so a copy of it
//! taken before the callback would still hold the state afterwards; this process remembers
//! each used state for as long as any cookie could carry it ([`STATE_TTL`]) and refuses it a
//! second time. The memory is bounded: when full of live entries, callbacks are refused
//! (503) rather than forgetting a state early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::state::STATE_TTL;

/// Used states kept at once: ten minutes of logins at well over a hundred per second.
const CAPACITY: usize = 100_000;
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
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    used: HashMap<String, Instant>,
    last_sweep: Option<Instant>,
}

impl Default for UsedStates {
    fn default() -> Self {
        Self::new(STATE_TTL, CAPACITY)
    }
}

impl UsedStates {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        UsedStates {
            ttl,
            capacity: capacity.max(1),
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
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ttl = self.ttl;
        if let Some(at) = inner.used.get(state) {
            if now.saturating_duration_since(*at) < ttl {
                return StateUse::Replayed;
            }
        }
        if inner.used.len() >= self.capacity && !inner.used.contains_key(state) {
            let due = inner
                .last_sweep
                .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_EVERY);
            if due {
                inner.last_sweep = Some(now);
                inner
                    .used
                    .retain(|_, at| now.saturating_duration_since(*at) < ttl);
            }
            if inner.used.len() >= self.capacity {
                return StateUse::Full;
            }
        }
        inner.used.insert(state.to_owned(), now);
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
