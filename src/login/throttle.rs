//! Limits that spend themselves on what costs or attacks, never on healthy logins (hundreds
//! of visitors share one carrier-NAT address): per client, refused callbacks (forged,
//! replayed or missing states, codes WeChat refuses) draw from `server.limits.login_rate` /
//! `login_burst`; per appid, calls to WeChat's API draw from `server.limits.wechat_rate`, so
//! the account's quota is kept. One token bucket per client in a bounded map: memory stays
//! bounded however many addresses an attacker has, because when the map is full the clients
//! it cannot track share one bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients tracked at once; beyond that, new clients share the overflow bucket.
const MAX_CLIENTS: usize = 65_536;
/// A full map is swept for idle buckets at most this often, so a flood of new addresses
/// cannot turn every check into a scan.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Which bucket a client draws from: an IPv4 address, or an IPv6 /64 (one subscriber's
/// prefix; single IPv6 addresses are free to come by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
    Overflow,
}

impl Key {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key::V4(u32::from(v4)),
            IpAddr::V6(v6) => Key::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Buckets {
    map: HashMap<Key, Bucket>,
    last_sweep: Option<Instant>,
}

pub struct Throttle {
    per_second: f64,
    burst: f64,
    capacity: usize,
    buckets: Mutex<Buckets>,
}

impl Throttle {
    /// `per_minute` sustained with bursts of `burst`; `None` when `per_minute` is 0 (off).
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        Self::with_capacity(per_minute, burst, MAX_CLIENTS)
    }

    fn with_capacity(per_minute: u32, burst: u32, capacity: usize) -> Option<Self> {
        (per_minute > 0).then(|| Throttle {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            capacity: capacity.max(1),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: None,
            }),
        })
    }

    /// Takes one token for `ip`; `Err(wait)` when the client must wait `wait` first.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    /// Whether `ip` has a token left, taking none: the gate in front of something that costs
    /// only when it fails (a callback), spent by [`Throttle::spend`] on failure.
    pub fn allows(&self, ip: IpAddr) -> Result<(), Duration> {
        self.with_bucket(ip, Instant::now(), |bucket, per_second| {
            if bucket.tokens >= 1.0 {
                Ok(())
            } else {
                Err(wait_for_token(bucket.tokens, per_second))
            }
        })
    }

    /// Takes one token from `ip` for something that failed. Concurrent failures admitted by
    /// [`Throttle::allows`] may overdraw the bucket, by at most a burst: the client then waits
    /// longer.
    pub fn spend(&self, ip: IpAddr) {
        let floor = -self.burst;
        self.with_bucket(ip, Instant::now(), |bucket, _| {
            bucket.tokens = (bucket.tokens - 1.0).max(floor);
        });
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.with_bucket(ip, now, |bucket, per_second| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Ok(())
            } else {
                Err(wait_for_token(bucket.tokens, per_second))
            }
        })
    }

    /// Runs `f` on `ip`'s bucket, refilled up to `now`.
    fn with_bucket<R>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Bucket, f64) -> R) -> R {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = Key::of(ip);
        if !buckets.map.contains_key(&key) && buckets.map.len() >= self.capacity {
            self.sweep(&mut buckets, now);
            if buckets.map.len() >= self.capacity {
                key = Key::Overflow;
            }
        }
        let burst = self.burst;
        let bucket = buckets.map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        f(bucket, self.per_second)
    }

    /// Forgets buckets that have refilled completely: such a client is as good as new.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        if buckets
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY)
        {
            return;
        }
        buckets.last_sweep = Some(now);
        let (per_second, burst) = (self.per_second, self.burst);
        buckets.map.retain(|key, b| {
            let refilled =
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second;
            *key == Key::Overflow || refilled < burst
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .len()
    }
}

fn wait_for_token(tokens: f64, per_second: f64) -> Duration {
    Duration::from_secs_f64(((1.0 - tokens) / per_second).max(0.001))
}

/// One token bucket for something shared by every client, such as one appid's WeChat API
/// quota: `per_minute` sustained, bursts of ten seconds' worth.
pub struct Budget {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl Budget {
    /// `None` when `per_minute` is 0 (off).
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        let per_second = f64::from(per_minute) / 60.0;
        let burst = (per_second * 10.0).max(1.0);
        (per_minute > 0).then(|| Budget {
            per_second,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        })
    }

    /// Takes one call's worth; `Err(wait)` when the budget is spent for now.
    pub fn take(&self) -> Result<(), Duration> {
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(wait_for_token(bucket.tokens, self.per_second))
        }
    }
}

/// Whole seconds to put in `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_when_the_rate_is_zero() {
        assert!(Throttle::new(0, 10).is_none());
    }

    #[test]
    fn burst_then_the_sustained_rate() {
        let t = Throttle::new(60, 3).unwrap();
        let start = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(t.check_at(a, start).is_ok());
        }
        let wait = t.check_at(a, start).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1);
        // One token a second comes back.
        assert!(t.check_at(a, start + Duration::from_millis(1000)).is_ok());
        assert!(t.check_at(a, start + Duration::from_millis(1000)).is_err());
        // Another client has its own bucket.
        assert!(t.check_at(ip("192.0.2.2"), start).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let t = Throttle::new(60, 1).unwrap();
        let now = Instant::now();
        assert!(t.check_at(ip("2001:db8:1:2::1"), now).is_ok());
        assert!(t.check_at(ip("2001:db8:1:2::ffff"), now).is_err());
        assert!(t.check_at(ip("2001:db8:1:3::1"), now).is_ok());
        // An IPv4-mapped address is the IPv4 client.
        assert!(t.check_at(ip("198.51.100.7"), now).is_ok());
        assert!(t.check_at(ip("::ffff:198.51.100.7"), now).is_err());
    }

    #[test]
    fn a_full_map_stays_bounded_and_untracked_clients_share_one_bucket() {
        let t = Throttle::with_capacity(60, 2, 4).unwrap();
        let now = Instant::now();
        for i in 0..4 {
            assert!(t.check_at(ip(&format!("10.0.0.{i}")), now).is_ok());
        }
        assert_eq!(t.tracked(), 4);
        // Nobody idle to forget: the newcomers share the overflow bucket (burst 2).
        assert!(t.check_at(ip("10.0.1.1"), now).is_ok());
        assert!(t.check_at(ip("10.0.1.2"), now).is_ok());
        assert!(t.check_at(ip("10.0.1.3"), now).is_err());
        assert!(t.tracked() <= 5);
        // Once the first clients have refilled, a sweep makes room again.
        let later = now + Duration::from_secs(10);
        assert!(t.check_at(ip("10.0.2.1"), later).is_ok());
        assert!(t.check_at(ip("10.0.2.1"), later).is_ok());
        assert!(t.check_at(ip("10.0.2.1"), later).is_err());
        assert!(t.tracked() <= 5);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
