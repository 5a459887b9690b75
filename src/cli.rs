//! The command line: `wxgate run`, `check`, `doctor`, `demo`, `mock-wechat`, `keygen`, `verify`,
//! `sessions`. `main.rs` only calls `main` here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};

#[derive(Debug, Parser)]
#[command(
    name = "wxgate",
    version,
    about = "WeChat web-authorization gateway (网页授权反向代理)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run(ConfigArg),
    /// Validate a configuration and print it with every secret redacted.
    Check(ConfigArg),
    /// Check a live deployment from the gateway's host: DNS, TLS certificate, the gateway
    /// behind public_url, the MP_verify file, the clock, WeChat's API; a checklist with
    /// the fix for each failure. Exit code 1 when something fails.
    Doctor(crate::doctor::DoctorArgs),
    /// Try the whole login on this machine: the gateway, the mock WeChat and a demo app in
    /// one process, nothing to configure. Prints the URL to open.
    #[cfg(feature = "dev-tools")]
    Demo(crate::demo::DemoArgs),
    /// Run the mock WeChat (authorize page and JSON API) for tests and the demo.
    #[cfg(feature = "dev-tools")]
    MockWechat(crate::mock::MockArgs),
    /// Write a new identity signing key (PKCS#8 PEM, mode 0600).
    Keygen(KeygenArgs),
    /// Verify an identity JWT with the keys, issuer and audience of a configuration.
    Verify(VerifyArgs),
    /// Count, inspect, revoke or purge sessions in the configured redb or Redis store.
    /// (A redb file is locked by a running gateway: stop it first.)
    Sessions(SessionsArgs),
    /// The JS-SDK's shared basic access_token and jsapi_ticket.
    Jssdk(JssdkArgs),
}

#[derive(Debug, clap::Args)]
struct JssdkArgs {
    #[command(subcommand)]
    action: JssdkAction,
    /// TOML configuration file; `WXGATE_*` environment variables override it.
    #[arg(
        long,
        short,
        global = true,
        default_value = "config/wxgate.toml",
        env = "WXGATE_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum JssdkAction {
    /// Replace the shared token with one from stable_token's force_refresh mode, then fetch
    /// a new ticket. This voids the account's current stable token for every service using it,
    /// and WeChat allows 20 a day: use it when the token leaked or WeChat calls it stale.
    /// (A redb file is locked by a running gateway: stop it first, or use Redis.)
    Refresh {
        /// Required: says you mean to void the current token.
        #[arg(long)]
        force: bool,
        /// The `[[apps]]` entry; default `[wechat]`.
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct SessionsArgs {
    #[command(subcommand)]
    action: SessionsAction,
    /// TOML configuration file; `WXGATE_*` environment variables override it.
    #[arg(
        long,
        short,
        global = true,
        default_value = "config/wxgate.toml",
        env = "WXGATE_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum SessionsAction {
    /// How many live sessions the store holds.
    Count,
    /// One user's live sessions: times, scope, nickname (never a token or session id).
    Inspect(UserArg),
    /// Log every session of one user out.
    Revoke(UserArg),
    /// Remove expired sessions now.
    PurgeExpired,
}

#[derive(Debug, clap::Args)]
struct UserArg {
    /// The user's openid.
    #[arg(long)]
    openid: String,
    /// The app the openid belongs to; default `wechat.appid`.
    #[arg(long)]
    appid: Option<String>,
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// RS256, ES256 or EdDSA.
    #[arg(long, default_value = "ES256")]
    algorithm: crate::identity::Algorithm,
    /// Where to write the key; refuses to overwrite an existing file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The token, as an upstream received it in the identity header.
    token: String,
    /// Verify with the gateway's public keys alone: a saved `/_wxgate/jwks.json` or its
    /// http(s) URL. No secret and no configuration needed (RS256, ES256, EdDSA).
    #[arg(long, value_name = "FILE|URL")]
    jwks: Option<String>,
    /// Expected `iss`; default: the configuration's `identity.issuer`, else `wxgate`.
    #[arg(long)]
    issuer: Option<String>,
    /// Expected `aud`; default: the configuration's `identity.audience`, else `wxgate-upstream`.
    #[arg(long)]
    audience: Option<String>,
    /// TOML configuration file; only its `[identity]` section is read (the key file, or
    /// the HS256 secret, also from `WXGATE_IDENTITY__SECRET`).
    #[arg(long, short, env = "WXGATE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// TOML configuration file; `WXGATE_*` environment variables override it.
    #[arg(
        long,
        short,
        default_value = "config/wxgate.toml",
        env = "WXGATE_CONFIG"
    )]
    config: PathBuf,
}

/// Parses the command line and runs the command; the exit code says how it went.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(arg) => run(&arg.config),
        Command::Check(arg) => check(&arg.config),
        Command::Doctor(args) => doctor(&args),
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => demo(args),
        #[cfg(feature = "dev-tools")]
        Command::MockWechat(args) => mock_wechat(args),
        Command::Keygen(args) => keygen(&args),
        Command::Verify(args) => verify(&args),
        Command::Sessions(args) => sessions(args),
        Command::Jssdk(args) => jssdk(args),
    }
}

fn load_or_report(path: &std::path::Path) -> Option<Config> {
    match config::load(path) {
        Ok(config) => Some(config),
        Err(e) => {
            eprintln!("wxgate: invalid configuration ({}):", path.display());
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            None
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(2);
    };
    if config.needs_login() {
        if let Err(e) = crate::session::check_existing_store(&config.session) {
            eprintln!("wxgate: invalid configuration ({}):", path.display());
            eprintln!("  {e}");
            return ExitCode::from(2);
        }
    }
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            println!("# {}: valid.", path.display());
            for line in crate::jssdk::operator_notes(&config) {
                println!("# {line}");
            }
            println!("# Effective configuration, secrets redacted:\n");
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wxgate: the configuration is valid but cannot be printed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(args: &crate::doctor::DoctorArgs) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    println!("wxgate doctor: {}", args.config.display());
    match runtime.block_on(crate::doctor::run(args)) {
        Ok(checks) => {
            let failed = checks.iter().filter(|c| c.failed()).count();
            if failed == 0 {
                println!("all checks passed");
                ExitCode::SUCCESS
            } else {
                println!("{failed} check(s) failed");
                ExitCode::FAILURE
            }
        }
        Err(crate::doctor::DoctorError::Config(e)) => {
            eprintln!(
                "wxgate doctor: invalid configuration ({}):",
                args.config.display()
            );
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("wxgate doctor: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(2);
    };
    crate::telemetry::init(config.log.format);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(crate::server::run(&config, Some(path))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("wxgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("wxgate: cannot start the async runtime: {e}");
            None
        }
    }
}

#[cfg(feature = "dev-tools")]
fn demo(args: crate::demo::DemoArgs) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Text);
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(crate::demo::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxgate demo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "dev-tools")]
fn mock_wechat(args: crate::mock::MockArgs) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Text);
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(crate::mock::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxgate mock-wechat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(args: &KeygenArgs) -> ExitCode {
    let pem = match crate::identity::generate_pem(args.algorithm) {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("wxgate keygen: {e}");
            return ExitCode::from(2);
        }
    };
    match write_private(&args.out, pem.as_bytes()) {
        Ok(()) => {
            println!(
                "wrote a {:?} signing key to {}",
                args.algorithm,
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wxgate keygen: cannot write {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

/// Creates `path` readable by its owner only, never replacing an existing key.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let config_path = match (&args.config, &args.jwks) {
        (Some(path), _) => Some(path.clone()),
        // Without a JWKS the keys come from the configuration, at its usual place.
        (None, None) => Some(PathBuf::from("config/wxgate.toml")),
        (None, Some(_)) => None,
    };
    let identity = match config_path.as_deref().map(config::load_identity) {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            eprintln!("wxgate verify: {e}");
            return ExitCode::from(2);
        }
        None => config::IdentityConfig::default(),
    };
    let issuer = args.issuer.as_deref().unwrap_or(&identity.issuer);
    let audience = args.audience.as_deref().unwrap_or(&identity.audience);
    let token = args.token.trim();
    let verified = match &args.jwks {
        Some(source) => match read_jwks(source) {
            Ok(jwks) => crate::identity::verify_with_jwks(token, &jwks, issuer, audience),
            Err(e) => {
                eprintln!("wxgate verify: the JWKS {source} cannot be read: {e}");
                return ExitCode::from(2);
            }
        },
        None => {
            let (current, previous) = identity.key_sources();
            match crate::identity::KeySet::load(&current, &previous) {
                Ok(keys) => keys.verify(token, issuer, audience),
                Err(e) => {
                    eprintln!("wxgate verify: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    match verified {
        Ok(claims) => {
            match serde_json::to_string_pretty(&claims) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("wxgate verify: valid, but the claims cannot be printed: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wxgate verify: invalid token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The JWKS document at `source`: an http(s) URL or a file.
fn read_jwks(source: &str) -> Result<Vec<u8>, String> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return std::fs::read(source).map_err(|e| e.to_string());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(source).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("it answered {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok(body.to_vec())
    })
}

fn sessions(args: SessionsArgs) -> ExitCode {
    use crate::session::manage::{self, Command as Manage};
    let Some(config) = load_or_report(&args.config) else {
        return ExitCode::from(2);
    };
    let user = |arg: UserArg| {
        (
            arg.appid.unwrap_or_else(|| config.wechat.appid.clone()),
            arg.openid,
        )
    };
    let command = match args.action {
        SessionsAction::Count => Manage::Count,
        SessionsAction::Inspect(arg) => {
            let (appid, openid) = user(arg);
            Manage::Inspect { appid, openid }
        }
        SessionsAction::Revoke(arg) => {
            let (appid, openid) = user(arg);
            Manage::Revoke { appid, openid }
        }
        SessionsAction::PurgeExpired => Manage::PurgeExpired,
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(manage::run(&config.session, &command)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e @ manage::ManageError::MemoryStore) => {
            eprintln!("wxgate sessions: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("wxgate sessions: {e}");
            ExitCode::FAILURE
        }
    }
}

fn jssdk(args: JssdkArgs) -> ExitCode {
    let JssdkAction::Refresh { force, app } = args.action;
    if !force {
        eprintln!(
            "wxgate jssdk refresh: add --force. It voids the account's current stable token for every service using it (WeChat allows 20 a day); the gateway refreshes by itself otherwise."
        );
        return ExitCode::from(2);
    }
    let Some(config) = load_or_report(&args.config) else {
        return ExitCode::from(2);
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(crate::jssdk::force_refresh(&config, app.as_deref())) {
        Ok(appid) => {
            println!(
                "{appid}: new basic access_token (force_refresh) and jsapi_ticket stored; the old token is void for every service of this account"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wxgate jssdk refresh: {e}");
            ExitCode::FAILURE
        }
    }
}
