//! `wxgate demo`: the whole WeChat login on one machine with nothing to configure — the mock
//! WeChat (with its 允许/拒绝 consent page), a demo upstream that shows what it received,
//! and the real gateway in front, all on loopback in one process with generated secrets.

pub mod browser;
pub mod page;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderName;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Secret;
use crate::app::{self, Lasting};
use crate::config::{Config, NonWeChat, RouteConfig, StoreKind};
use crate::identity::{Algorithm, KeySet, KeySource};
use crate::mock::{MockConfig, MockWeChat, Quirks};
use crate::server::{self, Running};
pub use browser::Webview;
use browser::{SimulatedWeChat, Simulation};
use upstream::{App, Verifier};

/// The friendly address the demo prefers; taken, it falls back to a free port.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Command-line flags of `wxgate demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address of the gateway, the URL to open [default: 127.0.0.1:8080, or a free port
    /// when 8080 is taken]. Port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// How the identity JWT is signed: ES256, RS256 or EdDSA (a key generated for this run,
    /// verified through the JWKS) or HS256 (a generated shared secret).
    #[arg(long, default_value = "ES256")]
    pub algorithm: Algorithm,
    /// The WeChat webview a new visitor's browser passes for: Android (`X-Requested-With:
    /// com.tencent.mm` on every request) and iOS in turn, or always one of them.
    /// `/_demo/view?as=android|ios|desktop` switches a visitor later.
    #[arg(long, value_enum, default_value_t = Webview::Alternate)]
    pub webview: Webview,
    /// How the simulated WeChat returns to the callback, and how its API writes text.
    #[command(flatten)]
    pub quirks: Quirks,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "--listen {0}: use an address a browser can open, such as 127.0.0.1:8080 (not 0.0.0.0 or ::)"
    )]
    Unspecified(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare the identity key for this run: {0}")]
    Key(String),
    #[error("the demo configuration is invalid (a bug): {0}")]
    Config(String),
    #[error(transparent)]
    Start(#[from] server::StartError),
}

/// A running demo: where each part listens, and the way to stop them.
pub struct Demo {
    /// The one URL to open.
    pub url: String,
    pub gateway: Running,
    pub mock: SocketAddr,
    pub upstream: SocketAddr,
    pub algorithm: Algorithm,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Demo {
    /// Stops the gateway (draining), then the mock and the upstream.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts the three parts; returns once all of them accept connections.
pub async fn start(args: &DemoArgs) -> Result<Demo, DemoError> {
    let gateway_listener = bind_gateway(args.listen, DEFAULT_LISTEN).await?;
    let gateway_addr = local_addr(&gateway_listener)?;
    // The other parts live on the gateway's address, so a browser that reaches one reaches all.
    let ip = gateway_addr.ip();
    let mock_listener = bind(SocketAddr::new(ip, 0)).await?;
    let mock_addr = local_addr(&mock_listener)?;
    let upstream_listener = bind(SocketAddr::new(ip, 0)).await?;
    let upstream_addr = local_addr(&upstream_listener)?;

    let mock_config = mock_config(mock_addr, &args.quirks);
    let key_dir = KeyDir::create()?;
    let identity = Identity::generate(args.algorithm, &key_dir)?;
    let config = gateway_config(
        gateway_addr,
        mock_addr,
        upstream_addr,
        &mock_config,
        &identity,
    );
    let problems = crate::config::validate(&config);
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(DemoError::Config(text.join("; ")));
    }
    let lasting = Lasting::new(&config);
    let gate = app::assemble(&config, &lasting).map_err(server::StartError::from)?;
    // The gate holds the key in memory now; nothing of it stays on disk.
    drop(key_dir);
    let simulation = Simulation::new(args.webview);
    let seen_by_gateway = Arc::clone(&simulation);
    let gateway = server::start_with(&config, (gate, lasting), gateway_listener, move |gate| {
        SimulatedWeChat::new(gate, seen_by_gateway)
    })
    .await?;

    let (stop, stopped) = watch::channel(false);
    let app = Arc::new(App {
        verifier: identity.verifier(gateway_addr)?,
        identity_header: HeaderName::from_static("x-wechat-identity"),
        issuer: config.identity.issuer.clone(),
        audience: config.identity.audience.clone(),
        jweixin_origin: format!("http://{mock_addr}"),
    });
    let mut mock_stopped = stopped.clone();
    // WeChat refuses browsers that are not its own: the mock sees the same webview as the gateway.
    let mock =
        MockWeChat::new(mock_config).dressed(Arc::new(move |headers: &mut http::HeaderMap| {
            simulation.dress(headers)
        }));
    let tasks = vec![
        tokio::spawn(async move {
            let until = async move {
                let _ = mock_stopped.changed().await;
            };
            if let Err(error) = mock.serve(mock_listener, until).await {
                tracing::error!(%error, "demo: the mock WeChat stopped");
            }
        }),
        tokio::spawn(upstream::serve(upstream_listener, app, stopped)),
    ];
    Ok(Demo {
        url: format!("http://{gateway_addr}/"),
        gateway,
        mock: mock_addr,
        upstream: upstream_addr,
        algorithm: args.algorithm,
        stop,
        tasks,
    })
}

/// `wxgate demo`: starts, prints where to go, runs until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let demo = start(&args).await?;
    println!("{}", banner(&demo));
    server::shutdown_signal().await;
    demo.shutdown().await;
    Ok(())
}

/// What the terminal shows: the URL first, then what runs where.
pub fn banner(demo: &Demo) -> String {
    let gw = demo.gateway.addr;
    let verified = match demo.algorithm {
        Algorithm::HS256 => "a generated HS256 secret shared with the demo app".to_owned(),
        other => {
            format!("{other} key generated for this run; JWKS at http://{gw}/_wxgate/jwks.json")
        }
    };
    format!(
        "wxgate demo: the WeChat login on this machine (Ctrl-C to stop)\n\
         \n\
         \x20 在浏览器中打开 · Open in a browser:  {url}\n\
         \n\
         \x20 gateway      http://{gw}  routes: / snsapi_userinfo, /base/ snsapi_base, /public/ public\n\
         \x20 mock WeChat  http://{mock}  consent page with 允许/拒绝; users at /_mock/users\n\
         \x20 demo app     http://{up}  the upstream, reached through the gateway\n\
         \x20 admin        http://{admin}/metrics\n\
         \x20 identity     {verified}\n\
         \n\
         \x20 Your browser is treated as WeChat's Android or iOS webview (--webview; by default in turn: the demo adds\n\
         \x20 \"MicroMessenger\" to its User-Agent, and Android's X-Requested-With: com.tencent.mm).\n\
         \x20 To see what a desktop visitor gets instead:  http://{gw}/_demo/view?as=desktop\n",
        url = demo.url,
        mock = demo.mock,
        up = demo.upstream,
        admin = demo.gateway.admin_addr,
    )
}

/// The requested address exactly, or else `preferred` falling back to a free port on the
/// same address when it is taken.
async fn bind_gateway(
    requested: Option<SocketAddr>,
    preferred: SocketAddr,
) -> Result<TcpListener, DemoError> {
    match requested {
        Some(addr) if addr.ip().is_unspecified() => Err(DemoError::Unspecified(addr)),
        Some(addr) => bind(addr).await,
        None => match bind(preferred).await {
            Ok(listener) => Ok(listener),
            Err(_) => bind(SocketAddr::new(preferred.ip(), 0)).await,
        },
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, DemoError> {
    listener.local_addr().map_err(|source| DemoError::Bind {
        addr: SocketAddr::new(DEFAULT_LISTEN.ip(), 0),
        source,
    })
}

/// The mock as a visitor meets it: a consent page to click, and avatars it serves itself.
fn mock_config(mock_addr: SocketAddr, quirks: &Quirks) -> MockConfig {
    let mut faults = crate::mock::Faults::default();
    quirks.apply(&mut faults);
    MockConfig {
        // WeChat's AppSecret shape (32 hex digits), which `wxgate check` insists on.
        secret: Secret::new(hex::encode(rand::random::<[u8; 16]>())),
        avatar_origin: Some(format!("http://{mock_addr}")),
        // Loopback redirect_uris are accepted with any port; a LAN address needs this.
        accept_any_redirect: !mock_addr.ip().is_loopback(),
        auto_consent: false,
        faults,
        ..MockConfig::default()
    }
}

fn gateway_config(
    gateway: SocketAddr,
    mock: SocketAddr,
    upstream: SocketAddr,
    mock_config: &MockConfig,
    identity: &Identity,
) -> Config {
    let mut config = Config::default();
    config.server.listen = gateway;
    config.server.public_url = url(&format!("http://{gateway}"));
    config.admin.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    config.wechat.appid = mock_config.appid.clone();
    config.wechat.secret = mock_config.secret.clone();
    if let Some(authorize) = url(&format!("http://{mock}/connect/oauth2/authorize")) {
        config.wechat.authorize_url = authorize;
    }
    if let Some(api) = url(&format!("http://{mock}")) {
        config.wechat.api_base = api;
    }
    config.session.store = StoreKind::Memory;
    config.session.cookie_secure = false;
    config.session.secret = Secret::new(random_secret());
    config.identity.algorithm = identity.algorithm;
    config.identity.key_file = identity.key_file.clone();
    config.identity.secret = Secret::new(identity.secret.clone().unwrap_or_default());
    config.identity.plain_headers = true;
    let upstream_url = url(&format!("http://{upstream}"));
    config.routes = page::ROUTES
        .iter()
        .filter_map(|route| {
            Some(RouteConfig {
                host: None,
                path: route.path.to_owned(),
                upstream: upstream_url.clone()?,
                scope: route.scope,
                non_wechat: NonWeChat::Qrcode,
                allow_snapshot: true,
                timeout: None,
                app: None,
                access: None,
            })
        })
        .collect();
    config
}

fn url(text: &str) -> Option<url::Url> {
    url::Url::parse(text).ok()
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The identity key of this run: a generated private key file, or an HS256 secret.
struct Identity {
    algorithm: Algorithm,
    key_file: Option<PathBuf>,
    secret: Option<String>,
}

impl Identity {
    fn generate(algorithm: Algorithm, dir: &KeyDir) -> Result<Self, DemoError> {
        if algorithm == Algorithm::HS256 {
            return Ok(Identity {
                algorithm,
                key_file: None,
                secret: Some(random_secret()),
            });
        }
        let pem =
            crate::identity::generate_pem(algorithm).map_err(|e| DemoError::Key(e.to_string()))?;
        let path = dir.path.join("identity.pem");
        write_private(&path, pem.as_bytes()).map_err(|e| DemoError::Key(e.to_string()))?;
        Ok(Identity {
            algorithm,
            key_file: Some(path),
            secret: None,
        })
    }

    /// How the demo app verifies: the gateway's JWKS, or the same HS256 secret.
    fn verifier(&self, gateway: SocketAddr) -> Result<Verifier, DemoError> {
        if let Some(secret) = &self.secret {
            let source = KeySource {
                algorithm: Algorithm::HS256,
                key_file: None,
                secret: Some(secret.clone()),
            };
            let keys = KeySet::load(&source, &[]).map_err(|e| DemoError::Key(e.to_string()))?;
            return Ok(Verifier::Shared(Box::new(keys)));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| DemoError::Key(e.to_string()))?;
        Ok(Verifier::Jwks {
            url: format!("http://{gateway}/_wxgate/jwks.json"),
            client,
        })
    }
}

/// A private temporary directory for the generated key, removed when dropped: the gateway
/// reads its key from a file, and the demo keeps it there only until the gate has loaded it.
struct KeyDir {
    path: PathBuf,
}

impl KeyDir {
    fn create() -> Result<Self, DemoError> {
        let name = format!(
            "wxgate-demo-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 8]>())
        );
        let path = std::env::temp_dir().join(name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .map_err(|e| DemoError::Key(format!("{}: {e}", path.display())))?;
        Ok(KeyDir { path })
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates `path` readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_default_port_falls_back_but_an_explicit_one_does_not() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let fallback = bind_gateway(None, addr).await.unwrap();
        let bound = fallback.local_addr().unwrap();
        assert!(bound.ip().is_loopback());
        assert_ne!(bound.port(), addr.port());
        assert!(matches!(
            bind_gateway(Some(addr), DEFAULT_LISTEN).await,
            Err(DemoError::Bind { .. })
        ));
        let unspecified: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            bind_gateway(Some(unspecified), DEFAULT_LISTEN).await,
            Err(DemoError::Unspecified(_))
        ));
    }

    #[test]
    fn the_demo_configuration_is_valid_for_every_algorithm() {
        for algorithm in Algorithm::ALL {
            let dir = KeyDir::create().unwrap();
            let identity = Identity::generate(algorithm, &dir).unwrap();
            let addr = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let mock = mock_config(addr(2), &Quirks::default());
            let config = gateway_config(addr(1), addr(2), addr(3), &mock, &identity);
            let problems = crate::config::validate(&config);
            assert!(problems.is_empty(), "{algorithm}: {problems:?}");
            assert_eq!(config.routes.len(), page::ROUTES.len());
            let path = dir.path.clone();
            drop(dir);
            assert!(!path.exists(), "the key directory is removed");
        }
    }
}
