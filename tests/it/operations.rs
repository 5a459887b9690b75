//! What operators rely on: `wxgate check`, environment overrides, the admin endpoints, and a
//! graceful drain on SIGTERM of the real binary.

use crate::support;

use std::process::Command;
use std::time::Duration;

use support::process::spawn_gateway;
use support::upstream::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_wxgate");

fn wxgate(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example_config() -> String {
    format!("{}/config/wxgate.toml", env!("CARGO_MANIFEST_DIR"))
}

/// What an operator supplies through the environment in place of the example's placeholders.
const REAL_SECRETS: &[(&str, &str)] = &[
    ("WXGATE_WECHAT__SECRET", "3f9a2c7e1b4d6a8f0c2e4b6d8f1a3c5e"),
    (
        "WXGATE_SESSION__SECRET",
        "kP3r9vQm2LxT8sWn4YzA7cBd6EfGh1Jk0uVw5",
    ),
    (
        "WXGATE_IDENTITY__SECRET",
        "Zt6yHq1mN8bVc3xL5kJ7gF2dS9aP0oI4uE",
    ),
];

#[test]
fn check_refuses_the_example_placeholders_and_accepts_it_with_real_secrets() {
    let (code, _out, err) = wxgate(&["check", "--config", &example_config()], &[]);
    assert_eq!(code, 2, "the example's placeholder secrets pass: {err}");
    for key in ["wechat.secret", "session.secret", "identity.secret"] {
        assert!(
            err.contains(&format!("{key}: is a placeholder")),
            "{key} not named: {err}"
        );
    }
    let (code, out, err) = wxgate(&["check", "--config", &example_config()], REAL_SECRETS);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"));
    assert!(out.contains("[redacted]"));
    for secret in [
        "example-appsecret-replace-me",
        "example-session-secret-replace-me-with-32-bytes-or-more",
        "example-identity-secret-replace-me-32-bytes-min",
        "redis://127.0.0.1:6379",
    ]
    .into_iter()
    .chain(REAL_SECRETS.iter().map(|(_, v)| *v))
    {
        assert!(!out.contains(secret), "check printed {secret}");
        assert!(!err.contains(secret), "check printed {secret}");
    }
}

/// Environment variables of one `wxgate check` run.
type Env<'a> = &'a [(&'a str, &'a str)];

/// `wxgate check` over `text` with the real secrets: (exit code, stderr).
fn check_text(
    dir: &std::path::Path,
    name: &str,
    text: &str,
    env: &[(&str, &str)],
) -> (i32, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let mut all = REAL_SECRETS.to_vec();
    all.extend_from_slice(env);
    let (code, _out, err) = wxgate(&["check", "--config", file.to_str().unwrap()], &all);
    assert!(!err.contains("panicked"), "{err}");
    (code, err)
}

#[test]
fn check_lists_what_the_js_sdk_needs_in_wechats_back_office() {
    // The example with real secrets from the environment, as an operator runs it.
    let (code, out, err) = wxgate(&["check", "--config", &example_config()], REAL_SECRETS);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "JS接口安全域名",
        "m.example.com",
        "IP白名单",
        "40164",
        "/cgi-bin/stable_token in normal mode",
        "wxgate jssdk refresh --force",
    ] {
        assert!(
            out.contains(needle),
            "check does not mention {needle}:\n{out}"
        );
    }
    // Forcing a new token voids it for every service of the account: never without --force.
    let (code, _, err) = wxgate(&["jssdk", "refresh", "--config", &example_config()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn check_names_the_key_of_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example_config()).unwrap();
    let cases = [
        (
            example.replace("scope = \"snsapi_base\"", "scope = \"snsapi_everything\""),
            "routes[2].scope: unknown scope \"snsapi_everything\", expected public | snsapi_base | snsapi_userinfo",
        ),
        (
            example.replace("max_headers = 100", "max_headerz = 100"),
            "server.limits.max_headerz: unknown key",
        ),
        (
            example.replace("timeout = \"10s\"", "timeout = \"ten seconds\""),
            "routes[2].timeout",
        ),
        (
            example.replace("path = \"/lottery/\"", "path = \"/lottery/../x\""),
            "routes[2].path",
        ),
        (
            example.replace("public_url = \"https://m.example.com\"", ""),
            "server.public_url: required",
        ),
        (
            example.replace(
                "upstream = \"http://127.0.0.1:9001\"",
                "upstream = \"ftp://127.0.0.1:9001/x\"",
            ),
            "routes[2].upstream",
        ),
    ];
    for (n, (text, want)) in cases.iter().enumerate() {
        let (code, err) = check_text(dir.path(), &format!("bad{n}.toml"), text, &[]);
        assert_eq!(code, 2, "case {n} should fail: {err}");
        assert!(err.contains(want), "case {n}: expected {want:?} in {err}");
    }
    let (code, _out, err) = wxgate(&["check", "--config", "/nonexistent/wxgate.toml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/wxgate.toml"), "{err}");
}

#[test]
fn check_refuses_what_cannot_work_naming_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example_config()).unwrap();
    let (code, err) = check_text(dir.path(), "good.toml", &example, &[]);
    assert_eq!(code, 0, "the example with real secrets is usable: {err}");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let under_a_file = format!("path = \"{}/sessions.redb\"", blocker.display());
    let public_url = "public_url = \"https://m.example.com\"";
    let cases: Vec<(String, Env, &str)> = vec![
        (
            example.replace(public_url, "public_url = \"http://m.example.com\""),
            &[],
            "session.cookie_secure: true with an http:// server.public_url (\"http://m.example.com\"): browsers drop Secure cookies over http, so every login would end on 登录已失效; serve https (public_url = \"https://m.example.com\") or, for a trial without TLS, set cookie_secure = false",
        ),
        (
            example.replace(public_url, "public_url = \"https://m.example.com:8443\""),
            &[],
            "server.public_url: \"https://m.example.com:8443\" carries port 8443: the 网页授权域名 has no port, so WeChat answers 10003",
        ),
        (
            example.replace(
                "appid = \"wx2ebfe5f20389c64a\"",
                "appid = \"wx2ebfe5f20389c6\"",
            ),
            &[],
            "wechat.appid: \"wx2ebfe5f20389c6\" is not an AppID: WeChat's are wx followed by 16 hex digits",
        ),
        (
            example.replace(
                "appid = \"wx2ebfe5f20389c64a\"",
                "appid = \"gh_2ebfe5f20389\"",
            ),
            &[],
            "wechat.appid: \"gh_2ebfe5f20389\" is not an AppID",
        ),
        (
            example.clone(),
            &[("WXGATE_WECHAT__SECRET", "1234567890")],
            "wechat.secret: is not an AppSecret (10 characters; WeChat's are 32 hex digits",
        ),
        (
            example.clone(),
            &[("WXGATE_WECHAT__SECRET", "changeme")],
            "wechat.secret: is a placeholder, not an AppSecret",
        ),
        (
            example.clone(),
            &[("WXGATE_SESSION__SECRET", "short")],
            "session.secret: must be at least 32 bytes",
        ),
        (
            example.clone(),
            &[(
                "WXGATE_SESSION__SECRET",
                "replace-me-with-a-long-random-value-0123456789",
            )],
            "session.secret: is a placeholder",
        ),
        (
            example.clone(),
            &[(
                "WXGATE_IDENTITY__SECRET",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            )],
            "identity.secret: is a placeholder",
        ),
        (
            example.replace("path = \"data/sessions.redb\"", &under_a_file),
            &[],
            "is not a directory",
        ),
        (
            // Not writable even by root: a directory of the kernel's.
            example.replace(
                "path = \"data/sessions.redb\"",
                "path = \"/proc/wxgate/sessions.redb\"",
            ),
            &[],
            "session.path: cannot create /proc/wxgate/sessions.redb: /proc is not writable",
        ),
    ];
    for (n, (text, env, want)) in cases.iter().enumerate() {
        let (code, err) = check_text(dir.path(), &format!("bad{n}.toml"), text, env);
        assert_eq!(code, 2, "case {n} should fail: {err}");
        assert!(err.contains(want), "case {n}: expected {want:?} in {err}");
        for (_, value) in env.iter().filter(|(k, _)| k.ends_with("SECRET")) {
            assert!(
                !err.contains(&format!("\"{value}\"")),
                "case {n} quoted a secret: {err}"
            );
        }
    }
    // Loopback stays usable for trials and tests: a port and http with Secure cookies
    // (browsers treat loopback as secure, and no WeChat reaches it anyway).
    for local in [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
    ] {
        let text = example.replace(public_url, &format!("public_url = \"{local}\""));
        let (code, err) = check_text(dir.path(), "local.toml", &text, &[]);
        assert_eq!(code, 0, "{local}: {err}");
    }
    // Forward-auth: wechat.appid and no [[routes]], as the README documents.
    let routes_start = example.find("[[routes]]").unwrap();
    let (code, err) = check_text(
        dir.path(),
        "forward-auth.toml",
        &example[..routes_start],
        &[],
    );
    assert_eq!(code, 0, "forward-auth without routes: {err}");
}

#[test]
fn environment_overrides_the_file_secret_included() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example_config()).unwrap();
    let file = dir.path().join("no-secret.toml");
    std::fs::write(
        &file,
        example
            .replace("secret = \"example-appsecret-replace-me\"", "secret = \"\"")
            .replace(
                "example-session-secret-replace-me-with-32-bytes-or-more",
                REAL_SECRETS[1].1,
            )
            .replace(
                "example-identity-secret-replace-me-32-bytes-min",
                REAL_SECRETS[2].1,
            ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, _, err) = wxgate(&["check", "--config", path], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("wechat.secret"), "{err}");
    let env_secret = "0123456789abcdef0123456789abcdef";
    let (code, out, err) = wxgate(
        &["check", "--config", path],
        &[
            ("WXGATE_WECHAT__SECRET", env_secret),
            ("WXGATE_SERVER__LISTEN", "127.0.0.1:18080"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:18080\""), "{out}");
    assert!(!out.contains(env_secret));
    // A numeric secret from the environment is still a secret, not a type error.
    let (code, _, err) = wxgate(
        &["check", "--config", path],
        &[("WXGATE_WECHAT__SECRET", "12345678901234567890123456789012")],
    );
    assert_eq!(code, 0, "{err}");
    // WXGATE_CONFIG names the file; it is not mistaken for a key of it.
    let (code, out, err) = wxgate(
        &["check"],
        &[
            ("WXGATE_CONFIG", path),
            ("WXGATE_WECHAT__SECRET", env_secret),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[wechat]"), "{out}");
}

#[test]
fn keygen_writes_a_key_that_signs_tokens_verify_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.pem");
    let (code, _, err) = wxgate(
        &[
            "keygen",
            "--algorithm",
            "ES256",
            "--out",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (code, _, _) = wxgate(
        &[
            "keygen",
            "--algorithm",
            "ES256",
            "--out",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0, "keygen must not overwrite a key");

    let example = std::fs::read_to_string(example_config()).unwrap();
    let config = example
        .replace("algorithm = \"HS256\"", "algorithm = \"ES256\"")
        .replace(
            "# key_file = \"config/identity.pem\"",
            &format!("key_file = \"{}\"", key.display()),
        );
    let config_file = dir.path().join("wxgate.toml");
    std::fs::write(&config_file, config).unwrap();
    let source = wxgate::identity::KeySource {
        algorithm: wxgate::identity::Algorithm::ES256,
        key_file: Some(key.clone()),
        secret: None,
    };
    let keys = wxgate::identity::KeySet::load(&source, &[]).unwrap();
    let facts = wxgate::identity::IdentityFacts {
        appid: "wx2ebfe5f20389c64a".into(),
        scope: "snsapi_base".into(),
        openid: "o6_bmjrPTlm6_2sgVt7hMZOPfL2M".into(),
        ..Default::default()
    };
    let claims = wxgate::identity::Claims::new(
        facts,
        "wxgate",
        "wxgate-upstream",
        Duration::from_secs(300),
        std::time::SystemTime::now(),
    );
    let token = keys.sign(&claims).unwrap();
    let (code, out, err) = wxgate(
        &["verify", &token, "--config", config_file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("o6_bmjrPTlm6_2sgVt7hMZOPfL2M"));
    let tampered = format!("{}x", &token[..token.len() - 1]);
    let (code, _, _) = wxgate(
        &[
            "verify",
            &tampered,
            "--config",
            config_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1);
}

#[tokio::test]
async fn admin_endpoints_report_health_and_count_requests() {
    let up = Upstream::start().await;
    let gw = support::start(&support::config_with_routes(&[
        ("/", up.addr),
        ("/api/", up.addr),
    ]))
    .await;
    let admin = |path: &str| format!("http://{}{}", gw.admin_addr, path);
    let c = support::client();
    assert_eq!(c.get(admin("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(admin("/readyz")).send().await.unwrap().status(), 200);
    for _ in 0..3 {
        c.get(support::url(&gw, "/api/x")).send().await.unwrap();
    }
    c.get(support::url(&gw, "/status/503"))
        .send()
        .await
        .unwrap();
    let metrics = c
        .get(admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("# HELP wxgate_http_requests"), "{metrics}");
    assert!(
        metrics.contains(r#"wxgate_http_requests_total{route="/api/",status="2xx"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"wxgate_http_requests_total{route="/",status="5xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"wxgate_http_request_duration_seconds_count{route="/api/"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains("wxgate_open_connections"), "{metrics}");
    // The admin listener is not the gateway: no route is served there.
    assert_eq!(c.get(admin("/api/x")).send().await.unwrap().status(), 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wxgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"10s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npath = \"/\"\nupstream = \"http://{}\"\n",
            up.addr
        ),
    )
    .unwrap();
    let (mut child, addr, _logs) = spawn_gateway(&config);
    let in_flight = tokio::spawn(async move {
        let resp = support::client()
            .get(format!("http://{addr}/slow/1500"))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow done");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn config_errors_read_as_sentences_naming_the_key_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example_config()).unwrap();
    // A typo in an environment variable: the variable is named, not the file.
    let (code, _, err) = wxgate(
        &["check", "--config", &example_config()],
        &[("WXGATE_SERVER__LISTN", "127.0.0.1:1")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("server.listn: unknown key"), "{err}");
    assert!(
        err.contains("set by the environment variable WXGATE_SERVER__LISTN"),
        "{err}"
    );
    assert!(!err.contains("(in "), "not blamed on the file: {err}");
    // A bad value from the environment names its variable too.
    let (code, _, err) = wxgate(
        &["check", "--config", &example_config()],
        &[("WXGATE_SESSION__TTL", "a week")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("session.ttl"), "{err}");
    assert!(err.contains("WXGATE_SESSION__TTL"), "{err}");

    // An upstream without its scheme: the fix, not the URL parser's words.
    let file = dir.path().join("no-scheme.toml");
    std::fs::write(
        &file,
        example.replace(
            "upstream = \"http://127.0.0.1:9001\"",
            "upstream = \"127.0.0.1:9001\"",
        ),
    )
    .unwrap();
    let (code, _, err) = wxgate(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("routes[2].upstream: \"127.0.0.1:9001\" is not an absolute URL: write it with its scheme, like http://127.0.0.1:9001"),
        "{err}"
    );
    assert!(!err.contains("relative URL without a base"), "{err}");

    // A key of another algorithm: said in words, not as `(WrongAlgorithm)`.
    let key = dir.path().join("es256.pem");
    let (code, _, err) = wxgate(
        &[
            "keygen",
            "--algorithm",
            "ES256",
            "--out",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("mismatch.toml");
    std::fs::write(
        &file,
        example
            .replace("algorithm = \"HS256\"", "algorithm = \"EdDSA\"")
            .replace(
                "# key_file = \"config/identity.pem\"",
                &format!("key_file = \"{}\"", key.display()),
            ),
    )
    .unwrap();
    let (code, _, err) = wxgate(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("identity.key_file"), "{err}");
    assert!(err.contains("it is a key of another algorithm"), "{err}");
    assert!(!err.contains("WrongAlgorithm"), "{err}");
}

#[test]
fn verify_needs_only_the_public_keys_or_the_identity_section() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.pem");
    std::fs::write(
        &key,
        wxgate::identity::generate_pem(wxgate::identity::Algorithm::ES256).unwrap(),
    )
    .unwrap();
    let keys = wxgate::identity::KeySet::load(
        &wxgate::identity::KeySource {
            algorithm: wxgate::identity::Algorithm::ES256,
            key_file: Some(key),
            secret: None,
        },
        &[],
    )
    .unwrap();
    let claims = |iss: &str| {
        wxgate::identity::Claims::new(
            wxgate::identity::IdentityFacts {
                appid: "wx2ebfe5f20389c64a".into(),
                scope: "snsapi_base".into(),
                openid: "o6_bmjrPTlm6_2sgVt7hMZOPfL2M".into(),
                ..Default::default()
            },
            iss,
            "wxgate-upstream",
            Duration::from_secs(300),
            std::time::SystemTime::now(),
        )
    };
    let token = keys.sign(&claims("wxgate")).unwrap();
    // What an upstream holds: the published JWKS, no configuration, no secret at all.
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, keys.jwks()).unwrap();
    let (code, out, err) = wxgate(&["verify", &token, "--jwks", jwks.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("o6_bmjrPTlm6_2sgVt7hMZOPfL2M"), "{out}");
    let other_issuer = keys.sign(&claims("someone-else")).unwrap();
    let (code, _, err) = wxgate(
        &["verify", &other_issuer, "--jwks", jwks.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("issuer"), "{err}");

    // HS256: a configuration with nothing but [identity], the secret from the environment.
    let secret = "verify-only-secret-0123456789-abcdefghij";
    let hs = wxgate::identity::KeySet::load(
        &wxgate::identity::KeySource {
            algorithm: wxgate::identity::Algorithm::HS256,
            key_file: None,
            secret: Some(secret.into()),
        },
        &[],
    )
    .unwrap();
    let token = hs.sign(&claims("wxgate")).unwrap();
    let config = dir.path().join("identity-only.toml");
    std::fs::write(&config, "[identity]\nalgorithm = \"HS256\"\n").unwrap();
    let (code, out, err) = wxgate(
        &["verify", &token, "--config", config.to_str().unwrap()],
        &[("WXGATE_IDENTITY__SECRET", secret)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("o6_bmjrPTlm6_2sgVt7hMZOPfL2M"), "{out}");
    assert!(!out.contains(secret) && !err.contains(secret));
}

#[tokio::test]
async fn the_access_log_counts_real_bytes_and_milliseconds_with_three_decimals() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wxgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npath = \"/app/\"\nupstream = \"http://{}\"\n",
            up.addr
        ),
    )
    .unwrap();
    let (mut child, addr, logs) = spawn_gateway(&config);
    // The gateway's own page: a 404 it writes itself.
    let resp = support::client()
        .get(format!("http://{addr}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let page_len = resp.bytes().await.unwrap().len();
    assert!(page_len > 100);
    let line = tokio::task::spawn_blocking(move || {
        loop {
            let line = logs.recv_timeout(Duration::from_secs(10)).unwrap();
            if line.contains("wxgate::access") && line.contains("/nowhere") {
                return line;
            }
        }
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains(&format!("bytes={page_len}")), "{line}");
    let ms = line
        .split("duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let (whole, decimals) = ms.split_once('.').expect("a decimal point");
    assert!(whole.bytes().all(|b| b.is_ascii_digit()), "{line}");
    assert_eq!(decimals.len(), 3, "{line}");
}
