//! The mock's fixture WeChat users, the users tests create at run time (`POST /_mock/users`,
//! for load tests that need many distinct visitors), and how their per-app identifiers are
//! derived. Identifiers have WeChat's shapes (openid/unionid: 28 chars starting with `o`) and
//! are stable for a given appid, so tests can predict them (`GET /_mock/users` lists them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// A built-in user a browser logs in as (chosen by the `mock_user` cookie).
#[derive(Debug)]
pub struct FixtureUser {
    pub id: &'static str,
    pub nickname: &'static str,
    /// What the picker on the consent page says about this user.
    pub note: &'static str,
    /// False: this user's grants never carry a unionid.
    pub has_unionid: bool,
    /// True: every login comes back as a 快照页 virtual account.
    pub always_snapshot: bool,
    /// Background colour of the generated avatar.
    pub color: &'static str,
}

pub const USERS: &[FixtureUser] = &[
    FixtureUser {
        id: "lilei",
        nickname: "李雷",
        note: "普通用户，有 unionid",
        has_unionid: true,
        always_snapshot: false,
        color: "#1aad19",
    },
    FixtureUser {
        id: "hanmeimei",
        nickname: "韩梅梅🌸😀",
        note: "昵称含 emoji",
        has_unionid: true,
        always_snapshot: false,
        color: "#e64340",
    },
    FixtureUser {
        id: "bell",
        nickname: "阿\u{7}铃\u{14}",
        note: "昵称含控制字符 0x07/0x14，无 unionid",
        has_unionid: false,
        always_snapshot: false,
        color: "#576b95",
    },
    FixtureUser {
        id: "laowang",
        nickname: "\u{E415}老王\u{E13C}",
        note: "昵称含旧式私用区 emoji",
        has_unionid: true,
        always_snapshot: false,
        color: "#fa9d3b",
    },
    FixtureUser {
        id: "xiaohong",
        // What a tolerant reader makes of the wire form in `escaped_nickname`.
        nickname: "小红\u{FFFD}",
        note: "昵称以 \\u 转义发送，末尾是孤立代理 \\ud83d（半个 emoji）",
        has_unionid: true,
        always_snapshot: false,
        color: "#d6336c",
    },
    FixtureUser {
        id: "snapshot",
        nickname: "快照用户",
        note: "总是快照页虚拟账号 (is_snapshotuser:1)",
        has_unionid: true,
        always_snapshot: true,
        color: "#888888",
    },
];

/// What userinfo shows for a 快照页 virtual account.
pub const SNAPSHOT_NICKNAME: &str = "微信用户";
pub const SNAPSHOT_HEADIMGURL: &str = "https://thirdwx.qlogo.cn/mmopen/vi_32/POgEwh4mIHO4nibH0KlMECNjjGxQUq24ZEaGT4poC6icRiccVGKSyXwibcPq4BWmiaIGuG1icwxaQX6grC9VemZoJ8rg/132";

/// The nickname of fixture `id` as WeChat sometimes writes it: every character `\u`-escaped
/// and an emoji cut in half, leaving a lone high surrogate that no Rust string can hold (so
/// it is the JSON literal itself). Strict parsers reject the whole userinfo.
pub fn escaped_nickname(id: &str) -> Option<&'static str> {
    (id == "xiaohong").then_some(r#""\u5c0f\u7ea2\ud83d""#)
}

pub fn find(id: &str) -> Option<&'static FixtureUser> {
    USERS.iter().find(|user| user.id == id)
}

impl FixtureUser {
    /// The openid of this user for `appid`; a snapshot login gets a different, virtual one.
    pub fn openid(&self, appid: &str, snapshot: bool) -> String {
        openid_of(self.id, appid, snapshot)
    }

    /// The unionid under the Open Platform account `platform`, when the user has one.
    pub fn unionid(&self, platform: &str, snapshot: bool) -> Option<String> {
        unionid_of(self.id, self.has_unionid, platform, snapshot)
    }

    /// A qlogo.cn URL shaped like WeChat's, or this user's avatar on the mock at `local_origin`.
    pub fn headimgurl(&self, local_origin: Option<&str>) -> String {
        headimgurl_of(self.id, local_origin)
    }
}

/// A user made by `POST /_mock/users`: an ordinary WeChat user with its own identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedUser {
    pub id: String,
    pub nickname: String,
    pub has_unionid: bool,
}

impl CreatedUser {
    /// A user with `id` (1 to 64 of `[A-Za-z0-9_-]`, not a fixture's) and `nickname`
    /// (the id when absent, at most 100 characters).
    pub fn new(id: &str, nickname: Option<&str>, has_unionid: bool) -> Result<Self, String> {
        let id_ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err("id must be 1 to 64 characters of [A-Za-z0-9_-]".into());
        }
        if find(id).is_some() {
            return Err(format!("{id} is a fixture user"));
        }
        let nickname = nickname.unwrap_or(id);
        if nickname.chars().count() > 100 {
            return Err("nickname must be at most 100 characters".into());
        }
        Ok(CreatedUser {
            id: id.to_owned(),
            nickname: nickname.to_owned(),
            has_unionid,
        })
    }
}

/// Anyone the mock can log in: a fixture or a created user.
#[derive(Debug, Clone)]
pub enum MockUser {
    Fixture(&'static FixtureUser),
    Created(Arc<CreatedUser>),
}

impl MockUser {
    pub fn id(&self) -> &str {
        match self {
            MockUser::Fixture(user) => user.id,
            MockUser::Created(user) => &user.id,
        }
    }

    pub fn nickname(&self) -> &str {
        match self {
            MockUser::Fixture(user) => user.nickname,
            MockUser::Created(user) => &user.nickname,
        }
    }

    pub fn note(&self) -> &str {
        match self {
            MockUser::Fixture(user) => user.note,
            MockUser::Created(_) => "created through POST /_mock/users",
        }
    }

    pub fn always_snapshot(&self) -> bool {
        matches!(self, MockUser::Fixture(user) if user.always_snapshot)
    }

    pub fn color(&self) -> &str {
        match self {
            MockUser::Fixture(user) => user.color,
            MockUser::Created(_) => "#07c160",
        }
    }

    pub fn openid(&self, appid: &str, snapshot: bool) -> String {
        openid_of(self.id(), appid, snapshot)
    }

    pub fn unionid(&self, platform: &str, snapshot: bool) -> Option<String> {
        let has_unionid = match self {
            MockUser::Fixture(user) => user.has_unionid,
            MockUser::Created(user) => user.has_unionid,
        };
        unionid_of(self.id(), has_unionid, platform, snapshot)
    }

    /// A qlogo.cn URL shaped like WeChat's, or this user's avatar on the mock at `local_origin`.
    pub fn headimgurl(&self, local_origin: Option<&str>) -> String {
        headimgurl_of(self.id(), local_origin)
    }
}

/// The fixtures plus the users created since start (or the last `/_mock/reset`).
#[derive(Debug, Default)]
pub struct Directory {
    created: Mutex<BTreeMap<String, Arc<CreatedUser>>>,
}

impl Directory {
    fn created_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<CreatedUser>>> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn find(&self, id: &str) -> Option<MockUser> {
        match find(id) {
            Some(fixture) => Some(MockUser::Fixture(fixture)),
            None => self.created_map().get(id).cloned().map(MockUser::Created),
        }
    }

    /// Adds `user`, replacing a created user of the same id.
    pub fn create(&self, user: CreatedUser) -> MockUser {
        let user = Arc::new(user);
        self.created_map().insert(user.id.clone(), user.clone());
        MockUser::Created(user)
    }

    /// Every user: the fixtures first, then the created ones by id.
    pub fn all(&self) -> Vec<MockUser> {
        let created = self.created_map();
        USERS
            .iter()
            .map(MockUser::Fixture)
            .chain(created.values().cloned().map(MockUser::Created))
            .collect()
    }

    pub fn clear(&self) {
        self.created_map().clear();
    }
}

fn openid_of(id: &str, appid: &str, snapshot: bool) -> String {
    derive_id(&["openid", appid, id, snapshot_tag(snapshot)])
}

fn unionid_of(id: &str, has_unionid: bool, platform: &str, snapshot: bool) -> Option<String> {
    (has_unionid || snapshot).then(|| derive_id(&["unionid", platform, id, snapshot_tag(snapshot)]))
}

fn headimgurl_of(id: &str, local_origin: Option<&str>) -> String {
    if let Some(origin) = local_origin {
        return format!("{}/_mock/avatar?user={id}", origin.trim_end_matches('/'));
    }
    let digest = hex::encode(Sha256::digest(id.as_bytes()));
    format!("https://thirdwx.qlogo.cn/mmopen/vi_32/{digest}/132")
}

fn snapshot_tag(snapshot: bool) -> &'static str {
    if snapshot { "virtual" } else { "real" }
}

/// `o` + 27 characters of `[A-Za-z0-9_-]`, like WeChat's openids and unionids.
fn derive_id(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\u{1f}").as_bytes());
    let encoded = URL_SAFE_NO_PAD.encode(digest);
    format!("o{}", &encoded[..27])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_wechat_shape_and_snapshot_ids_differ_from_real_ones() {
        let user = find("lilei").unwrap();
        let openid = user.openid("wx1", false);
        assert_eq!(openid.len(), 28);
        assert!(openid.starts_with('o'));
        assert!(
            openid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(openid, user.openid("wx1", false), "stable");
        assert_ne!(openid, user.openid("wx2", false), "per app");
        assert_ne!(openid, user.openid("wx1", true), "snapshot is virtual");
        assert_ne!(user.unionid("p", false), user.unionid("p", true));
        assert_eq!(find("bell").unwrap().unionid("p", false), None);
    }

    #[test]
    fn avatars_are_qlogo_shaped_or_served_by_the_mock() {
        let user = find("hanmeimei").unwrap();
        assert!(
            user.headimgurl(None)
                .starts_with("https://thirdwx.qlogo.cn/mmopen/vi_32/")
        );
        assert_eq!(
            user.headimgurl(Some("http://127.0.0.1:9100/")),
            "http://127.0.0.1:9100/_mock/avatar?user=hanmeimei"
        );
    }

    #[test]
    fn created_users_get_their_own_ids_and_never_shadow_a_fixture() {
        let directory = Directory::default();
        let made = directory.create(CreatedUser::new("load-1", Some("压测1"), true).unwrap());
        assert_eq!(made.nickname(), "压测1");
        let other = directory.create(CreatedUser::new("load-2", None, false).unwrap());
        assert_eq!(other.nickname(), "load-2");
        assert_ne!(made.openid("wx1", false), other.openid("wx1", false));
        assert_eq!(made.openid("wx1", false).len(), 28);
        assert_eq!(other.unionid("p", false), None);
        assert_eq!(
            directory.find("load-1").unwrap().openid("wx1", false),
            made.openid("wx1", false)
        );
        assert_eq!(directory.all().len(), USERS.len() + 2);
        for bad in ["", "lilei", "a b", &"x".repeat(65)] {
            assert!(CreatedUser::new(bad, None, true).is_err(), "{bad:?}");
        }
        directory.clear();
        assert!(directory.find("load-1").is_none());
        assert!(directory.find("lilei").is_some());
    }

    #[test]
    fn fixtures_cover_the_tricky_nicknames() {
        assert!(
            USERS
                .iter()
                .any(|u| u.nickname.chars().any(|c| c as u32 > 0xFFFF))
        );
        assert!(
            USERS
                .iter()
                .any(|u| u.nickname.contains('\u{7}') && !u.has_unionid)
        );
        assert!(USERS.iter().any(|u| {
            u.nickname
                .chars()
                .any(|c| ('\u{E000}'..='\u{F8FF}').contains(&c))
        }));
        assert!(USERS.iter().any(|u| u.always_snapshot));
    }
}
