//! Shared fixtures for the identity unit tests: generated keys (made once per test binary,
//! since RSA generation is slow) written to per-test temporary files, and sample claims.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::{Algorithm, Claims, IdentityFacts, KeySet, KeySource, generate_pem};

pub const ISSUER: &str = "wxgate";
pub const AUDIENCE: &str = "wxgate-upstream";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

/// Two distinct keys per asymmetric algorithm, so rotation and "another key" tests work.
pub fn pem(algorithm: Algorithm, index: usize) -> &'static str {
    static KEYS: OnceLock<Vec<[String; 2]>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
            .into_iter()
            .map(|alg| [generate_pem(alg).unwrap(), generate_pem(alg).unwrap()])
            .collect()
    });
    let slot = match algorithm {
        Algorithm::RS256 => 0,
        Algorithm::ES256 => 1,
        Algorithm::EdDSA => 2,
        Algorithm::HS256 => panic!("HS256 has no PEM"),
    };
    &keys[slot][index]
}

/// A key source for `algorithm`; asymmetric keys are written into `dir`.
pub fn source(dir: &Path, algorithm: Algorithm, index: usize) -> KeySource {
    match algorithm {
        Algorithm::HS256 => KeySource {
            algorithm,
            key_file: None,
            secret: Some(format!("{SECRET}-{index}")),
        },
        _ => {
            let path = dir.join(format!("{algorithm}-{index}.pem"));
            std::fs::write(&path, pem(algorithm, index)).unwrap();
            KeySource {
                algorithm,
                key_file: Some(path),
                secret: None,
            }
        }
    }
}

pub fn key_set(algorithm: Algorithm) -> KeySet {
    let dir = tempfile::tempdir().unwrap();
    KeySet::load(&source(dir.path(), algorithm, 0), &[]).unwrap()
}

pub fn facts() -> IdentityFacts {
    IdentityFacts {
        appid: "wx1234567890abcdef".into(),
        scope: "snsapi_userinfo".into(),
        openid: "oLVPpjqs9BhvzwPj5A-vTYAX3GLc".into(),
        unionid: Some("o6_bmasdasdsad6_2sgVt7hMZOPfL".into()),
        nickname: Some("小明😀".into()),
        headimgurl: Some("https://thirdwx.qlogo.cn/mmopen/abc/132".into()),
        sex: Some(1),
        province: Some("广东".into()),
        city: Some("深圳".into()),
        country: Some("中国".into()),
        privilege: Some(vec!["chinaunicom".into()]),
        snapshot: None,
    }
}

/// Claims issued `age` ago with a five-minute lifetime.
pub fn claims_aged(age: Duration) -> Claims {
    Claims::new(
        facts(),
        ISSUER,
        AUDIENCE,
        Duration::from_secs(300),
        SystemTime::now() - age,
    )
}

pub fn claims() -> Claims {
    claims_aged(Duration::ZERO)
}
