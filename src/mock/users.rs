//! The mock's fixture WeChat users and how their per-app identifiers are derived.
//! Identifiers have WeChat's shapes (openid/unionid: 28 chars starting with `o`) and are
//! stable for a given appid, so tests can predict them (`GET /_mock/users` lists them).

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

pub fn find(id: &str) -> Option<&'static FixtureUser> {
    USERS.iter().find(|user| user.id == id)
}

impl FixtureUser {
    /// The openid of this user for `appid`; a snapshot login gets a different, virtual one.
    pub fn openid(&self, appid: &str, snapshot: bool) -> String {
        derive_id(&["openid", appid, self.id, snapshot_tag(snapshot)])
    }

    /// The unionid under the Open Platform account `platform`, when the user has one.
    pub fn unionid(&self, platform: &str, snapshot: bool) -> Option<String> {
        (self.has_unionid || snapshot)
            .then(|| derive_id(&["unionid", platform, self.id, snapshot_tag(snapshot)]))
    }

    /// A qlogo.cn URL shaped like WeChat's, or this user's avatar on the mock at `local_origin`.
    pub fn headimgurl(&self, local_origin: Option<&str>) -> String {
        if let Some(origin) = local_origin {
            return format!(
                "{}/_mock/avatar?user={}",
                origin.trim_end_matches('/'),
                self.id
            );
        }
        let digest = hex::encode(Sha256::digest(self.id.as_bytes()));
        format!("https://thirdwx.qlogo.cn/mmopen/vi_32/{digest}/132")
    }
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
