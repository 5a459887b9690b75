//! How the memory store keeps a session: one exactly-sized heap block of packed bytes rather
//! than the `Session` struct and its dozen separately allocated strings, so a million idle
//! sessions cost about 600 bytes each instead of 1.4 KiB (`bench/results.md`). The times sit
//! at fixed offsets, so expiry checks and touches read and patch them without unpacking.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Profile, Session, WeChatToken, WeChatTokens};
use crate::login::AuthScope;

// Fixed part: six times of 12 bytes (seconds and nanoseconds since the epoch, little-endian),
// then flags, scope and sex; the strings follow, each as a u32 length and its bytes.
const EXPIRES_AT: usize = 0;
const LAST_SEEN: usize = 12;
const CREATED_AT: usize = 24;
const ACCESS_EXPIRES_AT: usize = 36;
const REFRESH_EXPIRES_AT: usize = 48;
const PROFILE_FETCHED_AT: usize = 60;
const FLAGS: usize = 72;
const SCOPE: usize = 73;
const SEX: usize = 74;
const STRINGS: usize = 75;

const SNAPSHOT: u8 = 1;
const HAS_UNIONID: u8 = 2;
const HAS_PROFILE: u8 = 4;
const HAS_PROFILE_FETCHED_AT: u8 = 8;

/// A session packed into one allocation.
pub(super) struct Packed(Box<[u8]>);

impl Packed {
    pub(super) fn pack(session: &Session) -> Self {
        let tokens = &session.tokens;
        let profile = session.profile.as_ref();
        let mut strings: Vec<&str> = vec![
            &session.appid,
            &session.openid,
            session.unionid.as_deref().unwrap_or(""),
            tokens.access_token.expose(),
            tokens.refresh_token.expose(),
        ];
        if let Some(p) = profile {
            strings.extend([
                p.nickname.as_str(),
                &p.headimgurl,
                &p.province,
                &p.city,
                &p.country,
            ]);
            strings.extend(p.privilege.iter().map(String::as_str));
        }
        let len = STRINGS + 4 + strings.iter().map(|s| 4 + s.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        for time in [
            session.expires_at,
            session.last_seen,
            session.created_at,
            tokens.access_expires_at,
            tokens.refresh_expires_at,
            session.profile_fetched_at.unwrap_or(UNIX_EPOCH),
        ] {
            put_time(&mut out, time);
        }
        let flags = (if session.snapshot { SNAPSHOT } else { 0 })
            | (if session.unionid.is_some() {
                HAS_UNIONID
            } else {
                0
            })
            | (if profile.is_some() { HAS_PROFILE } else { 0 })
            | (if session.profile_fetched_at.is_some() {
                HAS_PROFILE_FETCHED_AT
            } else {
                0
            });
        out.extend([flags, session.scope.to_wire(), profile.map_or(0, |p| p.sex)]);
        put_len(&mut out, profile.map_or(0, |p| p.privilege.len()));
        for s in strings {
            put_len(&mut out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Packed(out.into_boxed_slice())
    }

    /// The session back; `None` only if the bytes were not made by `pack` (they always are).
    pub(super) fn unpack(&self) -> Option<Session> {
        let bytes = &self.0;
        let flags = *bytes.get(FLAGS)?;
        let mut reader = Reader { bytes, at: STRINGS };
        let privileges = reader.len()?;
        let appid = reader.string()?;
        let openid = reader.string()?;
        let unionid = reader.string()?;
        let access_token = WeChatToken::new(reader.str()?);
        let refresh_token = WeChatToken::new(reader.str()?);
        let profile = if flags & HAS_PROFILE != 0 {
            Some(Profile {
                nickname: reader.string()?,
                headimgurl: reader.string()?,
                sex: *bytes.get(SEX)?,
                province: reader.string()?,
                city: reader.string()?,
                country: reader.string()?,
                privilege: (0..privileges)
                    .map(|_| reader.string())
                    .collect::<Option<_>>()?,
            })
        } else {
            None
        };
        Some(Session {
            appid,
            openid,
            unionid: (flags & HAS_UNIONID != 0).then_some(unionid),
            scope: AuthScope::from_wire(*bytes.get(SCOPE)?)?,
            snapshot: flags & SNAPSHOT != 0,
            profile,
            tokens: WeChatTokens {
                access_token,
                access_expires_at: time_at(bytes, ACCESS_EXPIRES_AT)?,
                refresh_token,
                refresh_expires_at: time_at(bytes, REFRESH_EXPIRES_AT)?,
            },
            created_at: time_at(bytes, CREATED_AT)?,
            last_seen: time_at(bytes, LAST_SEEN)?,
            profile_fetched_at: if flags & HAS_PROFILE_FETCHED_AT != 0 {
                Some(time_at(bytes, PROFILE_FETCHED_AT)?)
            } else {
                None
            },
            expires_at: time_at(bytes, EXPIRES_AT)?,
        })
    }

    pub(super) fn expires_at(&self) -> SystemTime {
        time_at(&self.0, EXPIRES_AT).unwrap_or(UNIX_EPOCH)
    }

    pub(super) fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at()
    }

    /// What a touch changes, written in place.
    pub(super) fn set_seen(&mut self, last_seen: SystemTime, expires_at: SystemTime) {
        write_time(&mut self.0[LAST_SEEN..LAST_SEEN + 12], last_seen);
        write_time(&mut self.0[EXPIRES_AT..EXPIRES_AT + 12], expires_at);
    }
}

/// Seconds and nanoseconds since the epoch; an instant before it (no session has one) is
/// kept as the epoch, which only makes such a session expire sooner.
fn put_time(out: &mut Vec<u8>, time: SystemTime) {
    let mut field = [0u8; 12];
    write_time(&mut field, time);
    out.extend_from_slice(&field);
}

fn write_time(field: &mut [u8], time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    field[..8].copy_from_slice(&since.as_secs().to_le_bytes());
    field[8..12].copy_from_slice(&since.subsec_nanos().to_le_bytes());
}

fn time_at(bytes: &[u8], at: usize) -> Option<SystemTime> {
    let secs = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
    let nanos = u32::from_le_bytes(bytes.get(at + 8..at + 12)?.try_into().ok()?);
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Strings come from WeChat answers and config; none is anywhere near 4 GiB.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn len(&mut self) -> Option<usize> {
        let raw = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        usize::try_from(u32::from_le_bytes(raw.try_into().ok()?)).ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.len()?;
        let raw = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        std::str::from_utf8(raw).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Lifetimes;
    use crate::session::test_support::{at, login};

    fn lifetimes() -> Lifetimes {
        Lifetimes::new(Duration::from_secs(600), Duration::from_secs(3600))
    }

    #[test]
    fn every_kind_of_session_unpacks_to_what_was_packed() {
        let full = Session::new(login("o1"), at(5), lifetimes());
        let mut base = login("o2");
        base.scope = AuthScope::Base;
        base.profile = None;
        base.unionid = None;
        let base = Session::new(base, at(7), lifetimes());
        let mut snapshot = login("o3");
        snapshot.snapshot = true;
        if let Some(p) = snapshot.profile.as_mut() {
            p.privilege = vec!["A".into(), String::new(), "中".into()];
            p.nickname = String::new();
        }
        let mut snapshot = Session::new(snapshot, at(9), lifetimes());
        snapshot.last_seen = at(9) + Duration::from_nanos(123_456_789);
        snapshot.profile_fetched_at = None;
        for session in [full, base, snapshot] {
            let packed = Packed::pack(&session);
            assert_eq!(packed.unpack().as_ref(), Some(&session));
            assert_eq!(packed.expires_at(), session.expires_at);
        }
    }

    #[test]
    fn a_touch_patches_the_times_in_place() {
        let session = Session::new(login("o1"), at(0), lifetimes());
        let mut packed = Packed::pack(&session);
        assert!(!packed.is_expired(at(599)));
        assert!(packed.is_expired(at(600)));
        let touched = session.touched(at(100), lifetimes());
        packed.set_seen(touched.last_seen, touched.expires_at);
        assert_eq!(packed.unpack(), Some(touched));
        assert!(!packed.is_expired(at(699)));
    }
}
