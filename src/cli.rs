//! The command line: `wxgate run`, `wxgate check`. `main.rs` only calls `main` here.

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
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            println!(
                "# {}: valid. Effective configuration, secrets redacted:\n",
                path.display()
            );
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wxgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("wxgate: {e}");
            ExitCode::FAILURE
        }
    }
}
