//! `wxgate doctor` against a live deployment on this machine: the real binary checks a
//! gateway serving TLS on `localhost` (certificates made here with rcgen, trusted through
//! `--ca-file`), the mock WeChat as WeChat's API, and a file server for `MP_verify_*.txt`;
//! each check is shown passing, then failing with its fix.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::wechat::{IDENTITY_SECRET, World, free_port, world_with};
use wxgate::config::{Config, Scope};

const VERIFY_FILE: &str = "MP_verify_Tk123abc.txt";
const SESSION_SECRET: &str = "test-session-secret-0123456789-abcdefghij";

/// A little web server: the verification file's token at its path, 404 for anything else;
/// over TLS when given a certificate (then it stands for "something that is not the gateway").
async fn site(tls: Option<(&Path, &Path)>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|(cert, key)| {
        let certs = rustls_pki_types::pem::PemObject::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::pem::PemObject::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = if req.uri().path() == format!("/{VERIFY_FILE}") {
                        (StatusCode::OK, "Tk123abc")
                    } else {
                        (StatusCode::NOT_FOUND, "not found")
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// A certificate for `localhost` valid until `days` from now, as PEM files in `dir`.
fn certificate(dir: &Path, name: &str, days: u64) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let (y, m, d) = ymd(SystemTime::now() + Duration::from_secs(days * 86_400));
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// Year, month and day of `t`, read off its HTTP date ("Sat, 05 Dec 2026 …").
fn ymd(t: SystemTime) -> (i32, u8, u8) {
    let text = httpdate::fmt_http_date(t);
    let parts: Vec<&str> = text.split_whitespace().collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])
    .unwrap() as u8
        + 1;
    (parts[3].parse().unwrap(), month, parts[1].parse().unwrap())
}

struct Deployment {
    world: World,
    dir: tempfile::TempDir,
    config: Config,
    ca: PathBuf,
}

/// The gateway on `https://localhost:<port>` with a certificate good for `cert_days`, a
/// public route serving the verification file, WeChat's API on the mock.
async fn deployment(cert_days: u64) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "gateway", cert_days);
    let files = site(None).await;
    let port = free_port();
    let mut kept = None;
    let world = world_with(|_, config| {
        config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.server.public_url =
            Some(url::Url::parse(&format!("https://localhost:{port}")).unwrap());
        config.server.tls = Some(wxgate::config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
        config.routes.push(support::route(
            &format!("/{VERIFY_FILE}"),
            files,
            Scope::Public,
        ));
        kept = Some(config.clone());
    })
    .await;
    Deployment {
        world,
        config: kept.unwrap(),
        dir,
        ca: cert,
    }
}

struct Outcome {
    code: i32,
    out: String,
}

impl Outcome {
    /// The checklist line that starts with `mark` and names `check`.
    fn line(&self, mark: &str, check: &str) -> &str {
        self.out
            .lines()
            .find(|l| l.starts_with(mark) && l.contains(check))
            .unwrap_or_else(|| panic!("no {mark} line for {check} in:\n{}", self.out))
    }

    /// The fix printed under the failed `check`.
    fn fix(&self, check: &str) -> &str {
        let mut lines = self.out.lines();
        lines
            .find(|l| l.starts_with("[FAIL]") && l.contains(check))
            .unwrap_or_else(|| panic!("{check} did not fail:\n{}", self.out));
        lines.next().unwrap_or("").trim()
    }
}

/// Runs the real binary on `config` (secrets from the environment, as in production).
async fn doctor(config: &Config, dir: &Path, extra: &[&str], secret: &str) -> Outcome {
    let file = dir.join(format!("doctor-{}.toml", rand_suffix()));
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxgate"))
        .arg("doctor")
        .arg("--config")
        .arg(&file)
        .args(extra)
        .env("WXGATE_WECHAT__SECRET", secret)
        .env("WXGATE_SESSION__SECRET", SESSION_SECRET)
        .env("WXGATE_IDENTITY__SECRET", IDENTITY_SECRET)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        out: text,
    }
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn mock_secret() -> String {
    wxgate::mock::MockConfig::default()
        .secret
        .expose()
        .to_owned()
}

#[tokio::test]
async fn a_healthy_deployment_passes_every_check() {
    let d = deployment(90).await;
    let ca = d.ca.to_str().unwrap();
    let secret = mock_secret();
    let o = doctor(
        &d.config,
        d.dir.path(),
        &["--ca-file", ca, "--call-wechat"],
        &secret,
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.out);
    o.line("[ok]", "server.public_url");
    o.line("[ok]", "DNS of localhost");
    assert!(
        o.line("[ok]", "TLS certificate of localhost")
            .contains("expires in 89 days")
    );
    assert!(
        o.line("[ok]", "the gateway behind public_url")
            .contains("this configuration's keys")
    );
    o.line("[ok]", "callback of [wechat]");
    o.line("[ok]", &format!("domain verification {VERIFY_FILE}"));
    o.line("[ok]", "WeChat API");
    o.line("[ok]", "clock");
    assert!(
        o.line("[ok]", "appid, AppSecret, IP whitelist")
            .contains("issued a token")
    );
    assert!(o.out.contains("all checks passed"));
    assert!(!o.out.contains(&secret), "the AppSecret never shows");
    assert!(!o.out.contains("86_"), "nor the access token");
    // Without --call-wechat no quota is spent: the check says how to run it.
    let o = doctor(&d.config, d.dir.path(), &["--ca-file", ca], &secret).await;
    assert_eq!(o.code, 0, "{}", o.out);
    assert!(
        o.line("[skip]", "appid, AppSecret")
            .contains("--call-wechat")
    );
    d.world.gw.shutdown().await;
}

#[tokio::test]
async fn wechat_side_failures_are_named_with_their_fix() {
    let d = deployment(90).await;
    let ca = d.ca.to_str().unwrap();
    // A wrong AppSecret in the environment.
    let o = doctor(
        &d.config,
        d.dir.path(),
        &["--ca-file", ca, "--call-wechat"],
        // WeChat's shape (32 hex digits), so `check` passes it and WeChat refuses it.
        "0000000000000000000000000000dead",
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.out);
    assert!(o.line("[FAIL]", "appid, AppSecret").contains("40125"));
    assert!(o.fix("appid, AppSecret").contains("WXGATE_WECHAT__SECRET"));

    // This host's IP not in the whitelist (WeChat answers 40164).
    let faults = format!("http://{}/_mock/faults", d.world.mock);
    let client = reqwest::Client::new();
    client
        .post(&faults)
        .body(r#"{"fail_next": 1, "fail_errcode": 40164}"#)
        .send()
        .await
        .unwrap();
    let o = doctor(
        &d.config,
        d.dir.path(),
        &["--ca-file", ca, "--call-wechat"],
        &mock_secret(),
    )
    .await;
    assert!(o.line("[FAIL]", "appid, AppSecret").contains("40164"));
    assert!(o.fix("appid, AppSecret").contains("IP白名单"));

    // This host's clock 10 minutes off WeChat's.
    client
        .post(format!("http://{}/_mock/clock", d.world.mock))
        .body(r#"{"advance_secs": 600}"#)
        .send()
        .await
        .unwrap();
    let o = doctor(&d.config, d.dir.path(), &["--ca-file", ca], &mock_secret()).await;
    assert!(
        o.line("[FAIL]", "clock").contains("behind WeChat's"),
        "{}",
        o.out
    );
    assert!(o.fix("clock").contains("timedatectl set-ntp true"));

    // WeChat's API unreachable.
    let mut config = d.config.clone();
    config.wechat.api_base = url::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    let o = doctor(&config, d.dir.path(), &["--ca-file", ca], &mock_secret()).await;
    assert!(o.line("[FAIL]", "WeChat API").contains("unreachable"));
    assert!(o.fix("WeChat API").contains("outbound HTTPS"));
    o.line("[skip]", "clock");
    d.world.gw.shutdown().await;
}

#[tokio::test]
async fn site_failures_are_named_with_their_fix() {
    let d = deployment(90).await;
    let ca = d.ca.to_str().unwrap();
    let secret = mock_secret();
    let port = d.config.server.public_url.as_ref().unwrap().port().unwrap();

    // A verification file WeChat asks for that the site does not serve.
    let o = doctor(
        &d.config,
        d.dir.path(),
        &["--ca-file", ca, "--verify-file", "MP_verify_Other999.txt"],
        &secret,
    )
    .await;
    assert_eq!(o.code, 1);
    o.line("[FAIL]", "domain verification MP_verify_Other999.txt");
    assert!(
        o.fix("MP_verify_Other999.txt")
            .contains("path = \"/MP_verify_Other999.txt\"")
    );

    // The certificate is for localhost, the public_url says 127.0.0.1.
    let mut config = d.config.clone();
    config.server.public_url = Some(url::Url::parse(&format!("https://127.0.0.1:{port}")).unwrap());
    let o = doctor(&config, d.dir.path(), &["--ca-file", ca], &secret).await;
    assert!(
        o.line("[FAIL]", "TLS certificate of 127.0.0.1")
            .contains("not valid for 127.0.0.1")
    );
    assert!(o.fix("TLS certificate").contains("certbot -d"));

    // A certificate nobody trusts (no --ca-file: not from a public CA).
    let o = doctor(&d.config, d.dir.path(), &[], &secret).await;
    assert!(
        o.line("[FAIL]", "TLS certificate of localhost")
            .contains("not signed by a public CA")
    );

    // Not https, a port on a public host, a host that does not resolve.
    for (url, check, found) in [
        ("http://localhost:1", "server.public_url", "is not https"),
        (
            "https://m.example.com:8443",
            "server.public_url",
            "has a port (8443)",
        ),
        (
            "https://wxgate-doctor.invalid",
            "DNS of wxgate-doctor.invalid",
            "does not resolve",
        ),
    ] {
        let mut config = d.config.clone();
        config.server.public_url = Some(url::Url::parse(url).unwrap());
        let o = doctor(&config, d.dir.path(), &["--ca-file", ca], &secret).await;
        assert_eq!(o.code, 1, "{}", o.out);
        assert!(o.line("[FAIL]", check).contains(found), "{}", o.out);
    }

    // public_url reaches a TLS server that is not the gateway: no JWKS, no callback.
    let (cert, key) = certificate(d.dir.path(), "other", 90);
    let other = site(Some((&cert, &key))).await;
    let mut config = d.config.clone();
    config.server.public_url =
        Some(url::Url::parse(&format!("https://localhost:{}", other.port())).unwrap());
    let o = doctor(
        &config,
        d.dir.path(),
        &["--ca-file", cert.to_str().unwrap()],
        &secret,
    )
    .await;
    assert!(
        o.line("[FAIL]", "the gateway behind public_url")
            .contains("answered 404")
    );
    assert!(
        o.line("[FAIL]", "callback of [wechat]")
            .contains("answered 404")
    );
    assert!(o.fix("callback of [wechat]").contains("forward /_wxgate/"));
    d.world.gw.shutdown().await;
}

#[tokio::test]
async fn a_certificate_about_to_expire_fails() {
    let d = deployment(3).await;
    let o = doctor(
        &d.config,
        d.dir.path(),
        &["--ca-file", d.ca.to_str().unwrap()],
        &mock_secret(),
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.out);
    let line = o.line("[FAIL]", "TLS certificate of localhost");
    assert!(
        line.contains("expires in 2 days") || line.contains("expires in 3 days"),
        "{line}"
    );
    assert!(o.fix("TLS certificate").contains("certbot renew"));
    // The rest of the deployment is fine.
    o.line("[ok]", "callback of [wechat]");
    d.world.gw.shutdown().await;
}
