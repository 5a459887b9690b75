//! The command line: `wxgate run`, `check`, `demo`, `mock-wechat`, `keygen`, `verify`,
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
    /// Try the whole login on this machine: the gateway, the mock WeChat and a demo app in
    /// one process, nothing to configure. Prints the URL to open.
    Demo(crate::demo::DemoArgs),
    /// Run the mock WeChat (authorize page and JSON API) for tests and the demo.
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
    #[command(flatten)]
    config: ConfigArg,
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
        Command::Demo(args) => demo(args),
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
    let Some(config) = load_or_report(&args.config.config) else {
        return ExitCode::from(2);
    };
    let (current, previous) = config.identity.key_sources();
    let keys = match crate::identity::KeySet::load(&current, &previous) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("wxgate verify: {e}");
            return ExitCode::from(2);
        }
    };
    match keys.verify(
        args.token.trim(),
        &config.identity.issuer,
        &config.identity.audience,
    ) {
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
