//! The session id the browser holds (256 random bits, base64url in the cookie) and the
//! key a store files it under (the id's SHA-256), so a dump of a store holds no live cookie.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

const ID_BYTES: usize = 32;
/// Unpadded base64 of 32 bytes.
const COOKIE_LEN: usize = 43;

/// A 256-bit random session id. Only [`SessionId::generate`] makes a new one and only
/// [`SessionId::from_cookie`] reads one back, so a value that is not exactly one of ours
/// never becomes an id. Its `Debug` prints nothing of the id.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId {
    bytes: [u8; ID_BYTES],
}

impl SessionId {
    /// A fresh id from the thread's CSPRNG (ChaCha, seeded from the OS).
    pub fn generate() -> Self {
        SessionId {
            bytes: rand::random(),
        }
    }

    /// Reads a cookie value back; anything but the exact canonical encoding of 32 bytes
    /// (length, alphabet, padding, trailing bits) is `None`.
    pub fn from_cookie(value: &str) -> Option<Self> {
        // Checked before decoding so an oversized or non-ASCII value costs nothing.
        if value.len() != COOKIE_LEN || !value.bytes().all(is_base64url) {
            return None;
        }
        // The base64 engine refuses non-zero trailing bits, so one id has one cookie value.
        // Decoded in place: this runs for every request that carries a session cookie.
        let mut bytes = [0; ID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(value, &mut bytes) {
            Ok(ID_BYTES) => Some(SessionId { bytes }),
            _ => None,
        }
    }

    /// The value to put in the session cookie.
    pub fn cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    /// Where a store keeps this session: the SHA-256 of the id's bytes.
    pub fn storage_key(&self) -> StorageKey {
        StorageKey(Sha256::digest(self.bytes).into())
    }
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

/// The SHA-256 of a session id: what stores, caches and logs may hold. Knowing it does not
/// give the cookie, so it may be printed (hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    /// A key read back from a store's own index.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StorageKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Picks one of `shards` buckets; the key is a hash, so its first bytes are uniform.
    pub(crate) fn shard(&self, shards: usize) -> usize {
        usize::from(u16::from_be_bytes([self.0[0], self.0[1]])) % shards.max(1)
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_id_round_trips_through_its_cookie_value() {
        for _ in 0..100 {
            let id = SessionId::generate();
            let value = id.cookie_value();
            assert_eq!(value.len(), COOKIE_LEN);
            assert!(value.bytes().all(is_base64url), "{value}");
            let back = SessionId::from_cookie(&value).unwrap();
            assert_eq!(back, id);
            assert_eq!(back.storage_key(), id.storage_key());
        }
    }

    #[test]
    fn generated_ids_are_unique_and_carry_256_bits() {
        let ids: HashSet<String> = (0..10_000)
            .map(|_| SessionId::generate().cookie_value())
            .collect();
        assert_eq!(ids.len(), 10_000);
        let sample = ids.iter().next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(sample).unwrap().len(), 32);
    }

    #[test]
    fn cookie_values_that_are_not_exactly_an_id_are_refused() {
        let good = SessionId::generate().cookie_value();
        let (head, last) = good.split_at(COOKIE_LEN - 1);
        let mut flipped_bit = good.clone().into_bytes();
        flipped_bit[5] = if flipped_bit[5] == b'A' { b'B' } else { b'A' };
        let flipped_bit = String::from_utf8(flipped_bit).unwrap();
        // The 43rd character carries 4 data bits and 2 zero bits; setting a zero bit gives
        // a value that decodes to the same bytes in a lax decoder.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last_index = ALPHABET
            .iter()
            .position(|c| c == &last.as_bytes()[0])
            .unwrap();
        let non_canonical_tail = format!("{head}{}", char::from(ALPHABET[last_index + 1]));
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("one short", good[..COOKIE_LEN - 1].to_owned()),
            ("one long", format!("{good}A")),
            ("padded", format!("{good}=")),
            ("standard alphabet +", format!("{head}+")),
            ("standard alphabet /", format!("{head}/")),
            ("space", format!("{head} ")),
            ("dot", format!("{head}.")),
            ("non-ASCII", format!("{}é", &good[..COOKIE_LEN - 2])),
            (
                "non-ASCII 43 bytes wide",
                format!("{}€", &good[..COOKIE_LEN - 3]),
            ),
            ("quoted", format!("\"{}\"", &good[..COOKIE_LEN - 2])),
            ("non-canonical trailing bits", non_canonical_tail),
            ("huge", "A".repeat(100_000)),
        ];
        for (what, value) in &cases {
            assert!(SessionId::from_cookie(value).is_none(), "{what}: {value:?}");
        }
        // A tampered but well-formed value is a different id, never the original one.
        let tampered = SessionId::from_cookie(&flipped_bit).unwrap();
        assert_ne!(
            tampered.storage_key(),
            SessionId::from_cookie(&good).unwrap().storage_key()
        );
    }

    #[test]
    fn storage_key_is_a_stable_hash_that_differs_from_the_id() {
        let id = SessionId::generate();
        let key = id.storage_key();
        assert_eq!(key, id.storage_key());
        assert_eq!(
            key,
            SessionId::from_cookie(&id.cookie_value())
                .unwrap()
                .storage_key()
        );
        assert_ne!(key.as_bytes(), &id.bytes);
        let expected: [u8; 32] = Sha256::digest(id.bytes).into();
        assert_eq!(key.as_bytes(), &expected);
        assert_ne!(key, SessionId::generate().storage_key());
        let hex = key.to_string();
        assert_eq!(hex.len(), 64);
        assert!(!hex.contains(&id.cookie_value()));
    }

    #[test]
    fn debug_of_an_id_prints_nothing_of_it() {
        let id = SessionId::generate();
        let debug = format!("{id:?}");
        assert!(!debug.contains(&id.cookie_value()), "{debug}");
        assert!(!debug.contains(&hex::encode(id.bytes)), "{debug}");
        assert!(!debug.contains(&id.storage_key().to_string()), "{debug}");
    }
}
