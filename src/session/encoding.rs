//! How a session is written to a persistent store (redb, Redis): one compact, versioned
//! byte string. A small plain header — the format version, the two clock fields a touch
//! rewrites in place, and the user's index tag — followed by the sealed body (identity,
//! profile, scope, WeChat tokens, creation and profile times), postcard-encoded and
//! encrypted with the record key under the storage key.
//!
//! ```text
//! 0      1            9             17          33
//! | ver  | last_seen  | expires_at  | user tag  | nonce ‖ sealed postcard body ‖ GCM tag |
//!        | u64 BE ms  | u64 BE ms   | 16 bytes  |
//! ```
//!
//! A new format gets a new version byte and a new body type; the decoder keeps every old
//! branch, so records written before an upgrade still decode after it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::sealing::{RecordKeys, TAG_LEN};
use super::{Profile, Session, StorageKey, WeChatToken, WeChatTokens};
use crate::login::AuthScope;

pub const VERSION_1: u8 = 1;
/// Where the clock fields sit and how long they are: a touch rewrites exactly these bytes.
pub const CLOCK_OFFSET: usize = 1;
pub const CLOCK_LEN: usize = 16;
const TAG_OFFSET: usize = CLOCK_OFFSET + CLOCK_LEN;
pub const HEADER_LEN: usize = TAG_OFFSET + TAG_LEN;
/// Authenticated with every body, so a body cannot be read as some other sealed value.
const CONTEXT_LABEL: &[u8] = b"wxgate-session";

/// Why stored bytes are not a session this gateway can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than its header")]
    Truncated,
    #[error("record format version {0} is unknown to this build")]
    UnknownVersion(u8),
    #[error("record does not open with this session.secret (changed secret or altered bytes)")]
    Unsealable,
    #[error("record body does not decode")]
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("session record cannot be encoded")]
    Unencodable,
}

/// What a store may read without the secret: enough to expire, touch and index a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub last_seen: SystemTime,
    pub expires_at: SystemTime,
    pub user_tag: [u8; TAG_LEN],
}

/// The sealed body of a version-1 record. Field order is the format: append only, and
/// only with a new version.
#[derive(Serialize, Deserialize)]
struct BodyV1 {
    appid: String,
    openid: String,
    unionid: Option<String>,
    /// 0 = snsapi_base, 1 = snsapi_userinfo.
    scope: u8,
    snapshot: bool,
    profile: Option<ProfileV1>,
    access_token: String,
    access_expires_ms: u64,
    refresh_token: String,
    refresh_expires_ms: u64,
    created_ms: u64,
    profile_fetched_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct ProfileV1 {
    nickname: String,
    headimgurl: String,
    sex: u8,
    province: String,
    city: String,
    country: String,
    privilege: Vec<String>,
}

/// The bytes a store keeps for `session` under `key`.
pub fn encode(
    keys: &RecordKeys,
    key: &StorageKey,
    session: &Session,
) -> Result<Vec<u8>, EncodeError> {
    let tag = keys.user_tag(&session.appid, &session.openid);
    let body = postcard::to_stdvec(&BodyV1::from(session)).map_err(|_| EncodeError::Unencodable)?;
    let sealed = keys
        .seal(&context(VERSION_1, &tag, key), &body)
        .map_err(|_| EncodeError::Unencodable)?;
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.push(VERSION_1);
    out.extend_from_slice(&clock_bytes(session.last_seen, session.expires_at));
    out.extend_from_slice(&tag);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The session stored as `bytes` under `key`.
pub fn decode(keys: &RecordKeys, key: &StorageKey, bytes: &[u8]) -> Result<Session, DecodeError> {
    let header = header(bytes)?;
    let sealed = &bytes[HEADER_LEN..];
    match header.version {
        VERSION_1 => {
            let plain = keys
                .open(&context(VERSION_1, &header.user_tag, key), sealed)
                .map_err(|_| DecodeError::Unsealable)?;
            let body: BodyV1 = postcard::from_bytes(&plain).map_err(|_| DecodeError::Malformed)?;
            body.into_session(&header)
        }
        other => Err(DecodeError::UnknownVersion(other)),
    }
}

/// The plain header, without the secret.
pub fn header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let version = bytes[0];
    if version != VERSION_1 {
        return Err(DecodeError::UnknownVersion(version));
    }
    let ms = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        from_ms(u64::from_be_bytes(word))
    };
    let mut user_tag = [0; TAG_LEN];
    user_tag.copy_from_slice(&bytes[TAG_OFFSET..HEADER_LEN]);
    Ok(Header {
        version,
        last_seen: ms(CLOCK_OFFSET),
        expires_at: ms(CLOCK_OFFSET + 8),
        user_tag,
    })
}

/// The clock fields as stored: what a touch writes over bytes `CLOCK_OFFSET..+CLOCK_LEN`.
pub fn clock_bytes(last_seen: SystemTime, expires_at: SystemTime) -> [u8; CLOCK_LEN] {
    let mut out = [0; CLOCK_LEN];
    out[..8].copy_from_slice(&to_ms(last_seen).to_be_bytes());
    out[8..].copy_from_slice(&to_ms(expires_at).to_be_bytes());
    out
}

/// Milliseconds since the Unix epoch; 0 before it (no session predates 1970).
pub fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Stored times are written by `to_ms`, so they are always representable; a corrupt value
/// past the platform's range reads as the far future rather than a panic.
pub fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(i32::MAX as u64))
}

fn context(version: u8, tag: &[u8; TAG_LEN], key: &StorageKey) -> Vec<u8> {
    let mut context = Vec::with_capacity(CONTEXT_LABEL.len() + 1 + TAG_LEN + 32);
    context.extend_from_slice(CONTEXT_LABEL);
    context.push(version);
    context.extend_from_slice(tag);
    context.extend_from_slice(key.as_bytes());
    context
}

impl From<&Session> for BodyV1 {
    fn from(s: &Session) -> Self {
        BodyV1 {
            appid: s.appid.clone(),
            openid: s.openid.clone(),
            unionid: s.unionid.clone(),
            scope: match s.scope {
                AuthScope::Base => 0,
                AuthScope::UserInfo => 1,
            },
            snapshot: s.snapshot,
            profile: s.profile.as_ref().map(|p| ProfileV1 {
                nickname: p.nickname.clone(),
                headimgurl: p.headimgurl.clone(),
                sex: p.sex,
                province: p.province.clone(),
                city: p.city.clone(),
                country: p.country.clone(),
                privilege: p.privilege.clone(),
            }),
            access_token: s.tokens.access_token.expose().to_owned(),
            access_expires_ms: to_ms(s.tokens.access_expires_at),
            refresh_token: s.tokens.refresh_token.expose().to_owned(),
            refresh_expires_ms: to_ms(s.tokens.refresh_expires_at),
            created_ms: to_ms(s.created_at),
            profile_fetched_ms: s.profile_fetched_at.map(to_ms),
        }
    }
}

impl BodyV1 {
    fn into_session(self, header: &Header) -> Result<Session, DecodeError> {
        let scope = match self.scope {
            0 => AuthScope::Base,
            1 => AuthScope::UserInfo,
            _ => return Err(DecodeError::Malformed),
        };
        Ok(Session {
            appid: self.appid,
            openid: self.openid,
            unionid: self.unionid,
            scope,
            snapshot: self.snapshot,
            profile: self.profile.map(|p| Profile {
                nickname: p.nickname,
                headimgurl: p.headimgurl,
                sex: p.sex,
                province: p.province,
                city: p.city,
                country: p.country,
                privilege: p.privilege,
            }),
            tokens: WeChatTokens {
                access_token: WeChatToken::new(self.access_token),
                access_expires_at: from_ms(self.access_expires_ms),
                refresh_token: WeChatToken::new(self.refresh_token),
                refresh_expires_at: from_ms(self.refresh_expires_ms),
            },
            created_at: from_ms(self.created_ms),
            last_seen: header.last_seen,
            profile_fetched_at: self.profile_fetched_ms.map(from_ms),
            expires_at: header.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::test_support::{ACCESS, REFRESH, at, login};
    use crate::session::{Lifetimes, SessionId};

    const SECRET: &[u8] = b"test-session-secret-0123456789-abcdefghij";

    fn keys() -> RecordKeys {
        RecordKeys::derive(SECRET).unwrap()
    }

    /// The session of the record fixtures (their openid is `o1`).
    fn session() -> Session {
        session_of("o1")
    }

    fn session_of(openid: &str) -> Session {
        let life = Lifetimes::new(Duration::from_secs(600), Duration::from_secs(3600));
        Session::new(login(openid), at(0), life).touched(at(30), life)
    }

    #[test]
    fn a_session_round_trips_and_its_tokens_are_not_in_the_bytes() {
        // Long enough that random ciphertext never happens to contain it: a two-byte
        // openid did, about once in two hundred runs.
        const OPENID: &str = "o-visible-openid";
        let keys = keys();
        let key = SessionId::generate().storage_key();
        let session = session_of(OPENID);
        let bytes = encode(&keys, &key, &session).unwrap();
        assert_eq!(decode(&keys, &key, &bytes).unwrap(), session);
        for secret in [ACCESS, REFRESH, OPENID, "小明"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} readable in the record"
            );
        }
        let header = header(&bytes).unwrap();
        assert_eq!(header.version, VERSION_1);
        assert_eq!((header.last_seen, header.expires_at), (at(30), at(630)));
        assert_eq!(header.user_tag, keys.user_tag(&session.appid, OPENID));
        // Compact: a full userinfo session with both tokens in a few hundred bytes.
        assert!(bytes.len() < 400, "{} bytes", bytes.len());
    }

    #[test]
    fn a_touch_rewrites_only_the_clock_bytes() {
        let keys = keys();
        let key = SessionId::generate().storage_key();
        let mut bytes = encode(&keys, &key, &session()).unwrap();
        bytes[CLOCK_OFFSET..CLOCK_OFFSET + CLOCK_LEN]
            .copy_from_slice(&clock_bytes(at(90), at(690)));
        let touched = decode(&keys, &key, &bytes).unwrap();
        assert_eq!((touched.last_seen, touched.expires_at), (at(90), at(690)));
        assert_eq!(touched.created_at, at(0));
    }

    #[test]
    fn records_that_are_not_ours_are_refused_without_panicking() {
        let keys = keys();
        let key = SessionId::generate().storage_key();
        let bytes = encode(&keys, &key, &session()).unwrap();
        let other_key = SessionId::generate().storage_key();
        let other_secret = RecordKeys::derive(b"another-secret-of-at-least-32-bytes!!").unwrap();
        let mut retagged = bytes.clone();
        retagged[TAG_OFFSET] ^= 1;
        let mut future = bytes.clone();
        future[0] = 2;
        let cases: Vec<(&str, &RecordKeys, &StorageKey, Vec<u8>, DecodeError)> = vec![
            ("empty", &keys, &key, Vec::new(), DecodeError::Truncated),
            (
                "header only",
                &keys,
                &key,
                bytes[..HEADER_LEN].to_vec(),
                DecodeError::Unsealable,
            ),
            (
                "copied to another key",
                &keys,
                &other_key,
                bytes.clone(),
                DecodeError::Unsealable,
            ),
            (
                "another secret",
                &other_secret,
                &key,
                bytes.clone(),
                DecodeError::Unsealable,
            ),
            (
                "user tag altered",
                &keys,
                &key,
                retagged,
                DecodeError::Unsealable,
            ),
            (
                "newer format",
                &keys,
                &key,
                future,
                DecodeError::UnknownVersion(2),
            ),
        ];
        for (what, keys, key, bytes, expected) in cases {
            assert_eq!(decode(keys, key, &bytes).unwrap_err(), expected, "{what}");
        }
    }

    /// A record written by the first release, kept as bytes: every later build must still
    /// read it (add a fixture like it for each new version).
    #[test]
    fn a_version_1_record_from_the_first_release_still_decodes() {
        let key = StorageKey::from_bytes([7; 32]);
        let bytes = hex::decode(V1_FIXTURE).unwrap();
        let session = decode(&keys(), &key, &bytes).unwrap();
        assert_eq!(session, self::session());
        assert_eq!(session.tokens.refresh_token.expose(), REFRESH);
    }

    const V1_FIXTURE: &str = concat!(
        "010000018bcfe5dd300000018bcfef04f0bac1f3e293d1da35e5dc23516903849a123cdd6a9b96d2",
        "f9bd0617a8151620a2841c7c650b3182a8d9957b443d52f4076246f17f71ef64c032fe74a1e980cc",
        "b20b28b375100ae49c381448c82c5e2e8ccb3083237fce5a9d02e73b4c90088654fe465cdb593aa5",
        "a9558d6bdec378788787edd080e1259a2a15c33178962a237ac646b2f33ae72ab64ede7d94da81a0",
        "f91dee163db3487d45e544535360318261df26d9ece044f7bfdf92baa008e27731938c533799f8eb",
        "c8c342cdf946e9d8a8e7bfd43dd2d5e9a6de57bd310bb9d93560283f31e3ad123bdb03229ce0dbb6",
        "552ec83247568fadb2a18f264aa9c5060c90469b86fe8624c3c272c0",
    );
}
