//! wxgate processes of a bench run, one per configuration variant (store, signing algorithm,
//! route count), each in front of the same origin and logging in against the same mock.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wxgate::mock::{DEFAULT_APPID, DEFAULT_SECRET};

use crate::procs::{Proc, free_addr, have};

/// The session store a gateway runs with, by its `session.store` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    Memory,
    Redb,
    Redis,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redb => "redb",
            Store::Redis => "redis",
        }
    }
}

/// A gateway configuration; rows that share one share the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub store: Store,
    /// `identity.algorithm`: HS256 or ES256.
    pub algorithm: &'static str,
    /// Extra `/campaign/N/` routes (all snsapi_userinfo) besides `/public/` and `/app/`.
    pub campaigns: usize,
    /// With N > 0, `/app/` admits only the openids of an N-line list file (the bench's
    /// visitor among them).
    pub access_ids: usize,
    /// The listener speaks TLS (h2 and http/1.1 by ALPN) with the run's certificate.
    pub tls: bool,
    /// `server.http1_fast_paths`: the gateway's own HTTP/1.1 server lane and upstream client.
    pub fast_paths: bool,
}

/// The route every logged-in row uses, and the public one.
pub const APP_PATH: &str = "/app/";
pub const PUBLIC_PATH: &str = "/public/";
/// The host of the page the JS-SDK row has signed.
pub const JSSDK_HOST: &str = "m.example.com";

/// Why a variant has no gateway in this run.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// The build refuses the store (`session.store: … not available in this build`).
    Store,
    Other(String),
}

pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub tls: bool,
    /// Kept alive as long as the gateway (the Redis row's own server).
    _redis: Option<Proc>,
}

impl Gateway {
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Everything the gateways of one run share.
pub struct Setup<'a> {
    pub wxgate: &'a Path,
    pub dir: &'a Path,
    pub origin: SocketAddr,
    pub mock: SocketAddr,
    /// Run the gateways under valgrind's callgrind (`--profile`).
    pub callgrind: bool,
    /// The certificate and key TLS rows serve (nginx's TLS listener has the same).
    pub tls: &'a (PathBuf, PathBuf),
}

pub fn start(setup: &Setup<'_>, variant: Variant, name: &str) -> Result<Gateway, Unavailable> {
    let other = Unavailable::Other;
    let addr = free_addr().map_err(other)?;
    let admin = free_addr().map_err(other)?;
    let home = setup.dir.join(name);
    std::fs::create_dir_all(&home).map_err(|e| other(e.to_string()))?;
    let redis = match variant.store {
        Store::Redis => Some(start_redis(&home)?),
        _ => None,
    };
    let key_file = match variant.algorithm {
        "HS256" => None,
        algorithm => Some(keygen(setup.wxgate, &home, algorithm).map_err(other)?),
    };
    if variant.access_ids > 0 {
        write_access_list(&home, variant.access_ids).map_err(|e| other(e.to_string()))?;
    }
    let config = config_toml(
        setup,
        variant,
        addr,
        admin,
        &home,
        key_file.as_deref(),
        redis.as_ref().map(|(_, a)| *a),
    );
    let config_path = home.join("wxgate.toml");
    std::fs::write(&config_path, config).map_err(|e| other(e.to_string()))?;
    let mut command = if setup.callgrind {
        let mut c = Command::new("valgrind");
        // Full names in every dump: a dump after `callgrind_control -z` cannot refer back.
        c.arg("--tool=callgrind")
            .arg("--compress-strings=no")
            .arg(format!(
                "--callgrind-out-file={}/callgrind.out",
                home.display()
            ))
            .arg(setup.wxgate);
        c
    } else {
        Command::new(setup.wxgate)
    };
    command
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn");
    let mut proc = Proc::spawn(name, command, setup.dir).map_err(other)?;
    let patience = Duration::from_secs(if setup.callgrind { 120 } else { 20 });
    match proc.wait_listening(addr, patience) {
        Ok(()) => Ok(Gateway {
            proc,
            addr,
            admin,
            tls: variant.tls,
            _redis: redis.map(|(p, _)| p),
        }),
        Err(e) if e.contains("not available in this build") => Err(Unavailable::Store),
        Err(e) => Err(other(e)),
    }
}

fn start_redis(home: &Path) -> Result<(Proc, SocketAddr), Unavailable> {
    if !have("redis-server") {
        return Err(Unavailable::Other("redis-server not found".into()));
    }
    let addr = free_addr().map_err(Unavailable::Other)?;
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port"])
        .arg(addr.port().to_string())
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(home);
    let mut proc = Proc::spawn("redis", command, home).map_err(Unavailable::Other)?;
    proc.wait_listening(addr, Duration::from_secs(10))
        .map_err(Unavailable::Other)?;
    Ok((proc, addr))
}

fn keygen(wxgate: &Path, home: &Path, algorithm: &str) -> Result<PathBuf, String> {
    let path = home.join(format!("{}.pem", algorithm.to_lowercase()));
    if path.exists() {
        return Ok(path);
    }
    let status = Command::new(wxgate)
        .args(["keygen", "--algorithm", algorithm, "--out"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(path)
    } else {
        Err(format!("wxgate keygen --algorithm {algorithm} failed"))
    }
}

/// `home/admitted.txt`: `n` openids, the mock's default visitor (whom the logged-in rows
/// log in as) in the middle of made-up ones shaped like WeChat's.
fn write_access_list(home: &Path, n: usize) -> std::io::Result<()> {
    let visitor = wxgate::mock::USERS
        .iter()
        .find(|user| user.id == "lilei")
        .map(|user| user.openid(DEFAULT_APPID, false))
        .unwrap_or_default();
    let mut text = String::with_capacity(n * 30);
    for i in 0..n {
        if i == n / 2 {
            text.push_str(&visitor);
        } else {
            let _ = write!(text, "oBench{i:022}");
        }
        text.push('\n');
    }
    std::fs::write(home.join("admitted.txt"), text)
}

fn config_toml(
    setup: &Setup<'_>,
    variant: Variant,
    addr: SocketAddr,
    admin: SocketAddr,
    home: &Path,
    key_file: Option<&Path>,
    redis: Option<SocketAddr>,
) -> String {
    let origin = setup.origin;
    let mock = setup.mock;
    let mut toml = format!(
        r#"[server]
listen = "{addr}"
public_url = "{scheme}://{addr}"
drain_timeout = "1s"
http1_fast_paths = {fast_paths}
{tls}

[server.limits]
# Room for the 10 000 idle connections of the memory measurement, and time to hold them.
max_connections = 20000
header_read_timeout = "60s"
idle_timeout = "120s"
# Every bench browser comes from 127.0.0.1: the per-client login rate would refuse the storm.
login_rate = 0

[admin]
listen = "{admin}"

[wechat]
appid = "{DEFAULT_APPID}"
secret = "{DEFAULT_SECRET}"
authorize_url = "http://{mock}/connect/oauth2/authorize"
api_base = "http://{mock}"

[session]
store = "{store}"
path = "{home}/sessions.redb"
redis_url = "redis://{redis}/0"
cookie_secure = false
secret = "bench-session-secret-0123456789-abcdefghij"

[identity]
algorithm = "{algorithm}"
secret = "bench-identity-secret-0123456789-abcdefghij"
{key_file}
[log]
access_log = false

[[routes]]
path = "{PUBLIC_PATH}"
upstream = "http://{origin}"

[[routes]]
path = "{APP_PATH}"
upstream = "http://{origin}"
scope = "snsapi_userinfo"
{app_access}

# A route host: pages there may have the JS-SDK sign them (the JS-SDK row).
[[routes]]
host = "{JSSDK_HOST}"
path = "/"
upstream = "http://{origin}"
"#,
        app_access = if variant.access_ids > 0 {
            format!(
                "access = {{ openids_file = \"{}/admitted.txt\" }}",
                home.display()
            )
        } else {
            String::new()
        },
        scheme = if variant.tls { "https" } else { "http" },
        fast_paths = variant.fast_paths,
        tls = if variant.tls {
            format!(
                "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                setup.tls.0.display(),
                setup.tls.1.display()
            )
        } else {
            String::new()
        },
        store = variant.store.as_str(),
        home = home.display(),
        redis = redis.map_or_else(|| "127.0.0.1:6379".to_owned(), |a| a.to_string()),
        algorithm = variant.algorithm,
        key_file =
            key_file.map_or_else(String::new, |p| format!("key_file = \"{}\"\n", p.display())),
    );
    for n in 0..variant.campaigns {
        let _ = write!(
            toml,
            "\n[[routes]]\npath = \"/campaign/{n}/\"\nupstream = \"http://{origin}\"\nscope = \"snsapi_userinfo\"\n"
        );
    }
    toml
}
