//! Reading the file and the environment into a `Config`, turning figment's errors into
//! problems named by their key (`routes[2].scope: …`).

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use super::Config;

/// One thing wrong with the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `routes[2].scope`, `session.secret`, …
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// Loads `path` (TOML) overlaid with `WXGATE_*` variables (`__` between levels), then
/// validates. Every problem found is returned, not only the first.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        });
    }
    let figment = Figment::from(Toml::file_exact(path)).merge(env_provider());
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(problems_of(e)))?;
    let problems = super::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Parses TOML text alone (no file, no environment, no validation): what the fuzz target
/// feeds arbitrary bytes to. Errors come back as problems named by key, as from `load`.
pub fn parse_toml(text: &str) -> Result<Config, ConfigError> {
    Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Invalid(problems_of(e)))
}

fn env_provider() -> Env {
    // `WXGATE_CONFIG` names the file (clap reads it); it is not a key of the file.
    Env::prefixed("WXGATE_").ignore(&["CONFIG"]).split("__")
}

fn problems_of(error: figment::Error) -> Vec<Problem> {
    error.into_iter().map(|e| problem_of(&e)).collect()
}

fn problem_of(e: &figment::Error) -> Problem {
    use figment::error::Kind;
    let mut key = key_path(&e.path);
    let mut message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path already ends with the unknown key itself.
            if !key.ends_with(field.as_str()) {
                key = join_key(&key, field);
            }
            format!("unknown key, expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => {
            key = join_key(&key, field);
            "missing key".to_owned()
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    if let (Some(meta), Some(profile)) = (&e.metadata, &e.profile) {
        let origin = meta.interpolate(profile, &e.path);
        match &meta.source {
            Some(figment::Source::File(file)) => {
                message = format!("{message} (in {})", file.display());
            }
            _ if origin.starts_with("WXGATE_") => {
                message = format!("{message} (from {origin})");
            }
            _ => {}
        }
    }
    if key.is_empty() {
        key = "(top level)".to_owned();
    }
    Problem::new(key, message)
}

fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// `["routes", "2", "scope"]` → `routes[2].scope`.
fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if segment.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push('[');
            out.push_str(segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_read_like_toml() {
        let p = |v: &[&str]| key_path(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["routes", "2", "scope"]), "routes[2].scope");
        assert_eq!(p(&["session", "ttl"]), "session.ttl");
        assert_eq!(p(&[]), "");
    }
}
