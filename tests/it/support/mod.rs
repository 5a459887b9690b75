//! Shared harness for the integration tests: a real upstream on a free port that records
//! what reached it, and the gateway started in-process on free ports.
#![allow(dead_code)]

pub mod haproxy;
pub mod nginx;
pub mod process;
pub mod redis_server;
pub mod upstream;
pub mod wechat;

use std::net::SocketAddr;

use wxgate::config::{Config, RouteConfig, Scope};
use wxgate::server::{self, Running};

/// A gateway configuration for tests: loopback, free ports, public routes to `upstream`.
pub fn config_with_routes(routes: &[(&str, SocketAddr)]) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.log.access_log = false;
    config.server.http1_fast_paths = fast_paths();
    for (path, upstream) in routes {
        config.routes.push(route(path, *upstream, Scope::Public));
    }
    config
}

/// Whether the gateway's own HTTP/1.1 (server lane, upstream client) is on in the tests:
/// `TEST_FAST_PATHS=off` turns it off (not a `WXGATE_` name: the binary reads those as
/// configuration, and tests start the binary too), and `./scripts/test` runs the transparency,
/// failure, security and HTTP/1.1 tests a second time that way.
pub fn fast_paths() -> bool {
    std::env::var("TEST_FAST_PATHS").as_deref() != Ok("off")
}

pub fn route(path: &str, upstream: SocketAddr, scope: Scope) -> RouteConfig {
    RouteConfig {
        host: None,
        path: path.to_owned(),
        upstream: url::Url::parse(&format!("http://{upstream}")).unwrap(),
        scope,
        non_wechat: wxgate::config::NonWeChat::Qrcode,
        allow_snapshot: true,
        timeout: None,
        app: None,
        access: None,
    }
}

pub async fn start(config: &Config) -> Running {
    let problems = wxgate::config::validate(config);
    assert!(problems.is_empty(), "test config invalid: {problems:?}");
    server::start(config).await.expect("gateway starts")
}

/// A client that never follows redirects and keeps no cookies unless asked.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

pub fn url(gw: &Running, path_and_query: &str) -> String {
    format!("http://{}{}", gw.addr, path_and_query)
}

/// Sends raw bytes on a fresh connection and returns everything read until the server closes
/// or `wait` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain GET through the gateway.
pub async fn get(gw: &Running, path_and_query: &str) -> reqwest::Response {
    client().get(url(gw, path_and_query)).send().await.unwrap()
}

/// A self-signed certificate for `localhost`, written to `dir` as `NAME.pem` and `NAME.key`:
/// the gateway's TLS settings for it, and the certificate for a client to trust.
pub fn self_signed(
    dir: &std::path::Path,
    name: &str,
) -> (
    wxgate::config::TlsConfig,
    rcgen::CertifiedKey<rcgen::KeyPair>,
) {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    (wxgate::config::TlsConfig { cert, key }, issued)
}

/// The gateway's metrics, as its admin listener exports them.
pub async fn metrics(gw: &Running) -> String {
    reqwest::get(format!("http://{}/metrics", gw.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
