//! The README's configuration reference is checked against the real configuration types, so
//! the two cannot drift apart.

use std::collections::BTreeSet;

fn documented_keys() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- config-reference:start -->")
        .expect("start marker");
    let end = readme
        .find("<!-- config-reference:end -->")
        .expect("end marker");
    readme[start..end]
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Every leaf key of a configuration with all optional parts filled in.
fn real_keys() -> BTreeSet<String> {
    let mut config = wxgate::config::Config::default();
    config.server.public_url = Some(url::Url::parse("https://m.example.com").unwrap());
    config.server.tls = Some(wxgate::config::TlsConfig {
        cert: "c".into(),
        key: "k".into(),
    });
    config.routes.push(wxgate::config::RouteConfig {
        host: Some("m.example.com".into()),
        path: "/".into(),
        upstream: url::Url::parse("http://127.0.0.1:9000").unwrap(),
        scope: wxgate::config::Scope::Public,
        non_wechat: wxgate::config::NonWeChat::Qrcode,
        allow_snapshot: true,
        timeout: Some(std::time::Duration::from_secs(1)),
        app: Some("shop".to_owned()),
        access: Some(every_access_key()),
    });
    config.apps.push(wxgate::config::AppConfig {
        name: "shop".into(),
        appid: "wx0000000000000002".into(),
        secret: "5ecc0de5ecc0de5ecc0de5ecc0de5ecc".into(),
        authorize_url: Some(url::Url::parse("https://open.weixin.qq.com/x").unwrap()),
        api_base: Some(url::Url::parse("https://api.weixin.qq.com").unwrap()),
        lang: Some("en".into()),
        timeout: Some(std::time::Duration::from_secs(1)),
        access: Some(every_access_key()),
    });
    config.wechat.access = Some(every_access_key());
    let value = serde_json::to_value(&config).unwrap();
    let mut keys = BTreeSet::new();
    collect("", &value, &mut keys);
    keys
}

fn every_access_key() -> wxgate::config::AccessConfig {
    wxgate::config::AccessConfig {
        openids: vec!["o1".into()],
        unionids: vec!["o2".into()],
        openids_file: Some("a".into()),
        unionids_file: Some("b".into()),
    }
}

fn collect(prefix: &str, value: &serde_json::Value, keys: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect(&key, v, keys);
            }
        }
        serde_json::Value::Array(items) if prefix == "routes" || prefix == "apps" => {
            for item in items {
                collect(&format!("{prefix}[]"), item, keys);
            }
        }
        _ => {
            keys.insert(prefix.to_owned());
        }
    }
}

#[test]
fn readme_documents_every_configuration_key_and_no_other() {
    let documented = documented_keys();
    let real = real_keys();
    let missing: Vec<_> = real.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&real).collect();
    assert!(
        missing.is_empty(),
        "keys missing from the README: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "README documents keys that do not exist: {stale:?}"
    );
}

/// The per-route example a newcomer copies is a configuration the gateway accepts, and it
/// routes the way the text around it says.
#[test]
fn readme_route_example_is_a_valid_configuration() {
    use wxgate::config::Scope;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("## Put it in front of your pages")
        .expect("the section")..];
    let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let mut config: wxgate::config::Config = toml::from_str(&section[start..end]).unwrap();
    // What the example leaves to the environment and to `wxgate keygen`.
    config.wechat.secret = wxgate::Secret::new("9a8b7c6d5e4f30211203f4e5d6c7b8a9");
    config.session.secret = wxgate::Secret::new("readme-session-secret-0123456789-abcdefghij");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.pem");
    let pem = wxgate::identity::generate_pem(wxgate::identity::Algorithm::ES256).unwrap();
    std::fs::write(&key, pem).unwrap();
    config.identity.key_file = Some(key);
    let problems = wxgate::config::validate(&config);
    assert!(problems.is_empty(), "{problems:?}");

    let table = wxgate::route::RouteTable::from_config(&config).unwrap();
    let scope = |path: &str| table.find(Some("m.example.com"), path).unwrap().scope;
    assert_eq!(scope("/activity/spring/index.html"), Scope::Public);
    assert_eq!(scope("/activity/spring/lottery/draw"), Scope::SnsapiBase);
    assert_eq!(scope("/activity/spring/rank/"), Scope::SnsapiUserinfo);
    assert_eq!(scope("/MP_verify_AbCdEf123456.txt"), Scope::Public);
    assert!(
        table
            .find(Some("m.example.com"), "/MP_verify_other.txt")
            .is_none()
    );
}
