//! The upstream verification snippets of `docs/upstream/` (Python, Node.js, PHP, Go, Java) run
//! as subprocesses against a real gateway: each must accept the token an upstream really
//! received and print the logged-in mock user's claims, and must refuse a token whose
//! signature was tampered with, one minted for another audience, an expired one and an
//! unsigned (`alg: none`) one. A missing toolchain skips its test, except under `CI=true`.

use crate::support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use support::upstream::Upstream;
use wxgate::config::{Config, Scope};
use wxgate::identity::{Algorithm, Claims, KeySet, KeySource};
use wxgate::mock::{MockConfig, MockWeChat, USERS};

const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";
/// Not the defaults, so a snippet that ignored its arguments would fail.
const ISSUER: &str = "wxgate-snippets";
const AUDIENCE: &str = "activity-pages";
/// The fixture user whose nickname carries emoji (韩梅梅🌸😀).
const USER: &str = "hanmeimei";
/// Only a guard against a hung toolchain; no assertion depends on how long anything takes.
const SUBPROCESS_LIMIT: Duration = Duration::from_secs(600);

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/upstream")
}

/// Build products and the Python venv live under the target directory, never in `docs/`.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("snippets")
}

/// A snippet that cannot run here: a skip with the reason, or a failure under `CI=true`.
fn unavailable(reason: &str) -> Option<Snippet> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason} (CI=true: a missing tool is a failure; scripts/test installs it)");
    }
    eprintln!("skipping: {reason}");
    None
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// The first of `commands` not on PATH.
fn first_missing<'a>(commands: &[&'a str]) -> Option<&'a str> {
    commands.iter().copied().find(|command| !on_path(command))
}

/// How to run one snippet: a program, the arguments before the four the snippets share, and
/// extra environment.
struct Snippet {
    program: OsString,
    leading_args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
}

async fn run(mut command: tokio::process::Command) -> Output {
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let described = format!("{command:?}");
    match tokio::time::timeout(SUBPROCESS_LIMIT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("cannot run {described}: {error}"),
        Err(_) => panic!("{described} still running after {SUBPROCESS_LIMIT:?}"),
    }
}

/// Runs a preparation step (install, build); `Err` carries what it printed.
async fn prepare(command: tokio::process::Command) -> Result<(), String> {
    let output = run(command).await;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// PyJWT[crypto] in a venv under the target directory, installed from PyPI the first time only.
async fn python() -> Option<Snippet> {
    if let Some(missing) = first_missing(&["python3"]) {
        return unavailable(&format!("{missing} not found"));
    }
    let venv = work_dir().join("venv");
    let python = venv.join("bin/python");
    let mut ready = tokio::process::Command::new(&python);
    ready.args(["-c", "import jwt, cryptography"]);
    if !python.is_file() || prepare(ready).await.is_err() {
        let mut create = tokio::process::Command::new("python3");
        create.args(["-m", "venv", "--clear"]).arg(&venv);
        let mut install = tokio::process::Command::new(&python);
        install
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(docs().join("python/requirements.txt"));
        let installed = match prepare(create).await {
            Ok(()) => prepare(install).await,
            Err(why) => Err(why),
        };
        if let Err(why) = installed {
            return unavailable(&format!(
                "cannot install PyJWT into {}: {why}",
                venv.display()
            ));
        }
    }
    Some(Snippet {
        program: python.into(),
        leading_args: vec![docs().join("python/verify.py").into()],
        env: Vec::new(),
    })
}

/// `jose` from package-lock.json into docs/upstream/node/node_modules (git-ignored), once.
async fn node() -> Option<Snippet> {
    if let Some(missing) = first_missing(&["node", "npm"]) {
        return unavailable(&format!("{missing} not found"));
    }
    let dir = docs().join("node");
    if !dir.join("node_modules/jose/package.json").is_file() {
        let mut install = tokio::process::Command::new("npm");
        install
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir);
        if let Err(why) = prepare(install).await {
            return unavailable(&format!("npm ci in {} failed: {why}", dir.display()));
        }
    }
    Some(Snippet {
        program: "node".into(),
        leading_args: vec![dir.join("verify.mjs").into()],
        env: Vec::new(),
    })
}

/// PHP's own openssl and json extensions; nothing to install beyond php-cli.
async fn php() -> Option<Snippet> {
    if let Some(missing) = first_missing(&["php"]) {
        return unavailable(&format!("{missing} not found"));
    }
    Some(Snippet {
        program: "php".into(),
        leading_args: vec![docs().join("php/verify.php").into()],
        env: Vec::new(),
    })
}

/// Debian's go-jose in GOPATH mode (no module proxy here), built into the target directory.
async fn go() -> Option<Snippet> {
    const GOPATH: &str = "/usr/share/gocode";
    if let Some(missing) = first_missing(&["go"]) {
        return unavailable(&format!("{missing} not found"));
    }
    if !Path::new(GOPATH)
        .join("src/gopkg.in/square/go-jose.v2")
        .is_dir()
    {
        return unavailable(
            "go-jose not found (Debian package golang-gopkg-square-go-jose.v2-dev)",
        );
    }
    let binary = work_dir().join("go-verify");
    let mut build = tokio::process::Command::new("go");
    build
        .args(["build", "-o"])
        .arg(&binary)
        .arg("verify.go")
        .current_dir(docs().join("go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOFLAGS", "")
        .env("GOCACHE", work_dir().join("gocache"));
    if let Err(why) = prepare(build).await {
        panic!("docs/upstream/go/verify.go does not build: {why}");
    }
    Some(Snippet {
        program: binary.into(),
        leading_args: Vec::new(),
        env: Vec::new(),
    })
}

/// The JDK plus Debian's Gson jar, compiled into the target directory.
async fn java() -> Option<Snippet> {
    const GSON: &str = "/usr/share/java/gson.jar";
    if let Some(missing) = first_missing(&["java", "javac"]) {
        return unavailable(&format!("{missing} not found"));
    }
    if !Path::new(GSON).is_file() {
        return unavailable(&format!(
            "{GSON} not found (Debian package libgoogle-gson-java)"
        ));
    }
    let classes = work_dir().join("java");
    let mut compile = tokio::process::Command::new("javac");
    compile
        .args(["-cp", GSON, "-d"])
        .arg(&classes)
        .arg(docs().join("java/Verify.java"));
    if let Err(why) = prepare(compile).await {
        panic!("docs/upstream/java/Verify.java does not compile: {why}");
    }
    let classpath = std::env::join_paths([PathBuf::from(GSON), classes])
        .unwrap_or_else(|e| panic!("classpath: {e}"));
    Some(Snippet {
        program: "java".into(),
        leading_args: vec!["-cp".into(), classpath, "Verify".into()],
        // The snippet writes UTF-8 bytes itself; keep the JVM's locale from mattering anyway.
        env: vec![("LC_ALL", "C.UTF-8".into())],
    })
}

/// A gateway signing ES256 with a key from `generate_pem`, the in-process mock WeChat whose
/// browsers log in as `USER`, and the recording upstream behind an `snsapi_userinfo` route.
struct World {
    gw: wxgate::server::Running,
    up: Upstream,
    origin: String,
    keys: KeySet,
    appid: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("identity.pem");
    std::fs::write(
        &key_file,
        wxgate::identity::generate_pem(Algorithm::ES256).unwrap(),
    )
    .unwrap();
    let keys = KeySet::load(
        &KeySource {
            algorithm: Algorithm::ES256,
            key_file: Some(key_file.clone()),
            secret: None,
        },
        &[],
    )
    .unwrap();

    let up = Upstream::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    let mock_config = MockConfig {
        auto_consent: true,
        default_user: USER.into(),
        ..MockConfig::default()
    };
    tokio::spawn(MockWeChat::new(mock_config.clone()).serve(listener, std::future::pending()));

    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let mut config: Config = support::config_with_routes(&[]);
    config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.server.public_url = Some(url::Url::parse(&origin).unwrap());
    config.wechat.appid = mock_config.appid.clone();
    config.wechat.secret = mock_config.secret.clone();
    config.wechat.authorize_url =
        url::Url::parse(&format!("http://{mock}/connect/oauth2/authorize")).unwrap();
    config.wechat.api_base = url::Url::parse(&format!("http://{mock}")).unwrap();
    config.session.store = wxgate::config::StoreKind::Memory;
    config.session.cookie_secure = false;
    config.session.secret = wxgate::Secret::new("test-session-secret-0123456789-abcdefghij");
    config.identity.algorithm = Algorithm::ES256;
    config.identity.key_file = Some(key_file);
    config.identity.issuer = ISSUER.into();
    config.identity.audience = AUDIENCE.into();
    config
        .routes
        .push(support::route("/", up.addr, Scope::SnsapiUserinfo));
    let gw = support::start(&config).await;
    World {
        gw,
        up,
        origin,
        keys,
        appid: mock_config.appid,
        _dir: dir,
    }
}

impl World {
    fn jwks_url(&self) -> String {
        format!("{}/_wxgate/jwks.json", self.origin)
    }

    /// Logs in as a WeChat browser would and returns the identity JWT the upstream received.
    async fn received_token(&self) -> String {
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(10))
            .cookie_store(true)
            .user_agent(WECHAT_UA)
            .no_proxy()
            .build()
            .unwrap();
        let hop = browser
            .get(format!("{}/activity/index.html", self.origin))
            .send()
            .await
            .unwrap();
        // The hash hop page goes on to WeChat as a browser without JavaScript does.
        let (_, authorize) = support::wechat::through_hop(hop).await;
        let page = browser
            .get(authorize.expect("the hash hop page"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "login should land on the page");
        let seen = self.up.last();
        assert_eq!(seen.uri, "/activity/index.html");
        seen.headers["x-wechat-identity"]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// Tokens an upstream must refuse, all built from the genuine one.
struct Forgeries {
    flipped_signature: String,
    other_audience: String,
    expired: String,
    unsigned: String,
}

fn forge(keys: &KeySet, genuine: &str, claims: &Claims) -> Forgeries {
    let (signed_part, signature) = genuine.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    signature[7] ^= 0x01;
    let flipped_signature = format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(signature));

    // Signed with the gateway's real key: only the claim checks can refuse these.
    let other_audience = keys
        .sign(&Claims {
            aud: "another-app".into(),
            ..claims.clone()
        })
        .unwrap();
    let an_hour_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let expired = keys
        .sign(&Claims {
            iat: an_hour_ago,
            exp: an_hour_ago + 300,
            ..claims.clone()
        })
        .unwrap();

    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": keys.signing_kid()});
    let payload = signed_part.split_once('.').unwrap().1;
    let unsigned = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header.to_string()));
    Forgeries {
        flipped_signature,
        other_audience,
        expired,
        unsigned,
    }
}

async fn verify(snippet: &Snippet, w: &World, token: &str) -> Output {
    let mut command = tokio::process::Command::new(&snippet.program);
    command
        .args(&snippet.leading_args)
        .args([w.jwks_url().as_str(), ISSUER, AUDIENCE, token])
        .envs(snippet.env.iter().map(|(k, v)| (k, v)));
    run(command).await
}

fn printed(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The whole contract for one language.
async fn snippet_verifies_and_refuses(language: &str, snippet: Option<Snippet>) {
    let Some(snippet) = snippet else { return };
    let w = world().await;
    let token = w.received_token().await;
    let claims = w.keys.verify(&token, ISSUER, AUDIENCE).unwrap();
    let user = USERS.iter().find(|user| user.id == USER).unwrap();

    let accepted = verify(&snippet, &w, &token).await;
    assert!(
        accepted.status.success(),
        "{language}: {}",
        printed(&accepted)
    );
    let stdout = String::from_utf8(accepted.stdout.clone()).unwrap();
    let shown: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{language} printed no JSON ({e}): {}", printed(&accepted)));
    assert_eq!(shown["openid"], user.openid(&w.appid, false), "{language}");
    assert_eq!(shown["nickname"], "韩梅梅🌸😀", "{language}");
    assert_eq!(shown["scope"], "snsapi_userinfo", "{language}");
    assert_eq!(
        shown,
        serde_json::to_value(&claims).unwrap(),
        "{language} should print exactly the claims the gateway signed"
    );

    let forged = forge(&w.keys, &token, &claims);
    for (what, bad) in [
        ("a flipped signature byte", &forged.flipped_signature),
        ("another audience", &forged.other_audience),
        ("an expired token", &forged.expired),
        ("alg none", &forged.unsigned),
    ] {
        let refused = verify(&snippet, &w, bad).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{language} must refuse {what}: {}",
            printed(&refused)
        );
        assert!(
            stderr.starts_with("rejected:") && refused.stdout.is_empty(),
            "{language} should say why it refused {what} and print no claims: {}",
            printed(&refused)
        );
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn python_pyjwt_snippet_verifies_the_identity_and_refuses_forgeries() {
    snippet_verifies_and_refuses("python", python().await).await;
}

#[tokio::test]
async fn node_jose_snippet_verifies_the_identity_and_refuses_forgeries() {
    snippet_verifies_and_refuses("node", node().await).await;
}

#[tokio::test]
async fn php_openssl_snippet_verifies_the_identity_and_refuses_forgeries() {
    snippet_verifies_and_refuses("php", php().await).await;
}

#[tokio::test]
async fn go_jose_snippet_verifies_the_identity_and_refuses_forgeries() {
    snippet_verifies_and_refuses("go", go().await).await;
}

#[tokio::test]
async fn java_jdk_snippet_verifies_the_identity_and_refuses_forgeries() {
    snippet_verifies_and_refuses("java", java().await).await;
}
