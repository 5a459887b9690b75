//! The shape of WeChat's credentials and of our own secrets: what the 公众平台 hands out, and
//! the placeholders an example file leaves behind. A wrong shape is caught by `wxgate check`
//! instead of by WeChat's errcode 40013/40125 on the first visitor's login.

/// Words that mark a value someone meant to replace. Matched case-insensitively anywhere in
/// the value, so `example-appsecret-replace-me` and `CHANGEME123` are both caught.
const PLACEHOLDER_WORDS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "replaceme",
    "replace-me",
    "replace_me",
    "placeholder",
    "your-secret",
    "your_secret",
    "yoursecret",
];

/// Prefixes that mark a placeholder: `example…`, `xxx…`, `<your secret>`.
const PLACEHOLDER_PREFIXES: &[&str] = &["example", "xxx", "<", "${", "todo", "fixme"];

/// An AppID as the 公众平台 issues it: `wx` and 16 lower-case hex digits.
pub fn is_appid(appid: &str) -> bool {
    appid.len() == 18
        && appid.starts_with("wx")
        && appid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An AppSecret as the 公众平台 issues it: 32 hex digits.
pub fn is_app_secret(secret: &str) -> bool {
    secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `secret` is an obvious placeholder: a marker word, a marker prefix, or one
/// character repeated (`aaaa…`, `0000…`).
pub fn is_placeholder(secret: &str) -> bool {
    let lower = secret.trim().to_ascii_lowercase();
    let mut bytes = lower.bytes();
    let repeated = match bytes.next() {
        Some(first) => bytes.all(|b| b == first),
        None => false,
    };
    repeated
        || PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w))
        || PLACEHOLDER_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// Why an AppSecret cannot work, if it cannot; `None` when empty (reported as missing
/// elsewhere) or well-formed. Never quotes the value: it is a secret.
pub fn app_secret_problem(secret: &str, env: &str) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    if is_placeholder(secret) {
        return Some(format!(
            "is a placeholder, not an AppSecret: set the Official Account's AppSecret (公众平台 → 设置与开发 → 基本配置) through {env}"
        ));
    }
    if !is_app_secret(secret) {
        return Some(format!(
            "is not an AppSecret ({} characters; WeChat's are 32 hex digits, 公众平台 → 设置与开发 → 基本配置): set it through {env}",
            secret.chars().count()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appids_are_wx_and_sixteen_hex_digits() {
        assert!(is_appid("wx2ebfe5f20389c64a"));
        assert!(is_appid("wx0000000000b2b2b2"));
        for bad in [
            "",
            "wx2ebfe5f20389c64",
            "wx2ebfe5f20389c64aa",
            "WX2ebfe5f20389c64a",
            "wx2ebfe5f20389c64g",
            "wx2EBFE5F20389C64A",
            "gh_2ebfe5f20389",
            "2ebfe5f20389c64a00",
        ] {
            assert!(!is_appid(bad), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_caught_and_real_looking_values_are_not() {
        for p in [
            "example-appsecret-replace-me",
            "CHANGEME",
            "change-me-please-0123456789abcdef",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "Example0123456789abcdef0123456789",
            "<your secret>",
            "00000000000000000000000000000000",
            "${WECHAT_SECRET}",
        ] {
            assert!(is_placeholder(p), "{p}");
        }
        for real in [
            "5b2c8e1f7a9d4c3e0f6a19d27c4b8e03",
            "test-session-secret-0123456789-abcdefghij",
            "kP3r9vQm2LxT8sWn4YzA7cBd6EfGh1Jk",
        ] {
            assert!(!is_placeholder(real), "{real}");
        }
    }

    #[test]
    fn an_app_secret_problem_never_quotes_the_secret() {
        let secret = "not-a-real-appsecret-but-secret";
        let m = app_secret_problem(secret, "WXGATE_WECHAT__SECRET").unwrap();
        assert!(!m.contains(secret), "{m}");
        assert!(m.contains("32 hex digits"), "{m}");
        assert!(app_secret_problem("5b2c8e1f7a9d4c3e0f6a19d27c4b8e03", "E").is_none());
        assert!(app_secret_problem("", "E").is_none());
    }
}
