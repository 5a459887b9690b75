//! The keys that protect session records at rest, derived from `session.secret`: an
//! AES-256-GCM key that seals each record (bound to its storage key, so a record copied under
//! another key does not open), and an HMAC key that names a user's index entry without
//! writing the openid down. A copy of the store without the secret yields no WeChat token.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::hmac;

/// Domain separation from every other key derived from `session.secret` (the state cookie's
/// uses its own label and derivation).
const SALT: &[u8] = b"wxgate/session-store/v1";
const AEAD_PURPOSE: &[u8] = b"record-aead";
const INDEX_PURPOSE: &[u8] = b"user-index";

/// Bytes of a user tag: enough that two users never share one.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext: the nonce in front, the GCM tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// A secret too short to derive the keys from (config validation refuses it first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session.secret must be at least 32 bytes to encrypt sessions at rest")]
pub struct SecretTooShort;

/// A plaintext beyond what AES-GCM may seal in one message (64 GiB): never a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session record too large to seal")]
pub struct TooLarge;

/// A sealed value that does not open: another secret, another key, or altered bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed session record does not open with this secret")]
pub struct Unsealable;

/// The record key and the index key.
pub struct RecordKeys {
    aead: LessSafeKey,
    index: hmac::Key,
}

impl RecordKeys {
    pub fn derive(session_secret: &[u8]) -> Result<Self, SecretTooShort> {
        if session_secret.len() < 32 {
            return Err(SecretTooShort);
        }
        let prk = Salt::new(HKDF_SHA256, SALT).extract(session_secret);
        // Both expansions ask for the length their algorithm defines, which HKDF-SHA256
        // always provides (at most 255 × 32 bytes); a failure here is a broken library.
        let aead = prk
            .expand(&[AEAD_PURPOSE], &AES_256_GCM)
            .map(UnboundKey::from)
            .map_err(|_| SecretTooShort)?;
        let index = prk
            .expand(&[INDEX_PURPOSE], hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .map_err(|_| SecretTooShort)?;
        Ok(RecordKeys {
            aead: LessSafeKey::new(aead),
            index,
        })
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plaintext`, authenticated together with `context`.
    /// The nonce is random: records are sealed once per login or refresh, far below the
    /// 2^32 messages a random 96-bit nonce allows under one key.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TooLarge> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plaintext);
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce, Aad::from(context), &mut out[NONCE_LEN..])
            .map_err(|_| TooLarge)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext of a value `seal` made with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Unsealable);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut buffer = body.to_vec();
        let plain_len = self
            .aead
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| Unsealable)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }

    /// The index tag of one user of one app: stable for a secret, meaningless without it.
    pub fn user_tag(&self, appid: &str, openid: &str) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(&self.index);
        context.update(appid.as_bytes());
        // appid never holds a NUL, so ("ab", "c") and ("a", "bc") cannot collide.
        context.update(&[0]);
        context.update(openid.as_bytes());
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&context.sign().as_ref()[..TAG_LEN]);
        tag
    }
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordKeys([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-session-secret-0123456789-abcdefghij";

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_context() {
        let keys = RecordKeys::derive(SECRET).unwrap();
        let sealed = keys.seal(b"key-1", b"refresh_token=abc").unwrap();
        assert_eq!(sealed.len(), 17 + SEAL_OVERHEAD);
        assert!(!sealed.windows(17).any(|w| w == b"refresh_token=abc"));
        assert_eq!(keys.open(b"key-1", &sealed).unwrap(), b"refresh_token=abc");
        assert_eq!(
            keys.open(b"key-2", &sealed),
            Err(Unsealable),
            "moved record"
        );
        let other = RecordKeys::derive(b"another-secret-of-at-least-32-bytes!!").unwrap();
        assert_eq!(other.open(b"key-1", &sealed), Err(Unsealable));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(keys.open(b"key-1", &flipped), Err(Unsealable));
        assert_eq!(keys.open(b"key-1", &sealed[..10]), Err(Unsealable));
        assert_ne!(
            keys.seal(b"key-1", b"x").unwrap(),
            keys.seal(b"key-1", b"x").unwrap(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn user_tags_are_keyed_and_separate_appid_from_openid() {
        let keys = RecordKeys::derive(SECRET).unwrap();
        let again = RecordKeys::derive(SECRET).unwrap();
        assert_eq!(keys.user_tag("wx1", "o1"), again.user_tag("wx1", "o1"));
        assert_ne!(keys.user_tag("wx1", "o1"), keys.user_tag("wx1", "o2"));
        assert_ne!(keys.user_tag("ab", "c"), keys.user_tag("a", "bc"));
        let other = RecordKeys::derive(b"another-secret-of-at-least-32-bytes!!").unwrap();
        assert_ne!(keys.user_tag("wx1", "o1"), other.user_tag("wx1", "o1"));
    }

    #[test]
    fn short_secrets_are_refused_and_debug_shows_nothing() {
        assert!(RecordKeys::derive(&[7; 31]).is_err());
        let keys = RecordKeys::derive(&[7; 32]).unwrap();
        assert_eq!(format!("{keys:?}"), "RecordKeys([redacted])");
    }
}
