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

/// Only the `[identity]` section of `path` (with its `WXGATE_IDENTITY__*` variables), not
/// validated as a whole: what verifying a token needs, without the WeChat or session secrets
/// of a running gateway. An absent section is the default one.
pub fn load_identity(path: &Path) -> Result<super::IdentityConfig, ConfigError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        });
    }
    let figment = Figment::from(Toml::file_exact(path)).merge(env_provider());
    if !figment.contains("identity") {
        return Ok(super::IdentityConfig::default());
    }
    figment
        .extract_inner("identity")
        .map_err(|e| ConfigError::Invalid(problems_of(e)))
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
    let mut segments = e.path.clone();
    let mut message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path already ends with the unknown key itself.
            if !key.ends_with(field.as_str()) {
                key = join_key(&key, field);
                segments.push(field.clone());
            }
            format!("unknown key, expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => {
            key = join_key(&key, field);
            "missing key".to_owned()
        }
        Kind::InvalidValue(actual, expected) => invalid_value(actual, expected),
        Kind::Message(m) => message(m),
        other => other.to_string(),
    };
    // Where the bad value came from: an environment variable named for the key wins (the
    // merged table's tag may still name the file), else the file.
    if let Some(variable) = variable_for(&segments) {
        message = format!("{message} (set by the environment variable {variable})");
    } else if let Some(figment::Source::File(file)) =
        e.metadata.as_ref().and_then(|m| m.source.as_ref())
    {
        message = format!("{message} (in {})", file.display());
    }
    if key.is_empty() {
        key = "(top level)".to_owned();
    }
    Problem::new(key, message)
}

/// serde's "invalid value: string \"x\", expected <what the parser said>", as a sentence.
fn invalid_value(actual: &figment::error::Actual, expected: &str) -> String {
    let value = match actual {
        figment::error::Actual::Str(s) => s.clone(),
        other => other.to_string(),
    };
    url_problem(expected, &value)
        .unwrap_or_else(|| format!("\"{value}\" is not valid: expected {expected}"))
}

/// The url crate's serde message, `<reason>: "<value>"`, as a sentence with the fix; other
/// messages unchanged.
fn message(m: &str) -> String {
    m.split_once(": \"")
        .and_then(|(reason, rest)| url_problem(reason, rest.strip_suffix('"')?))
        .unwrap_or_else(|| m.to_owned())
}

/// A URL parser's reason (`relative URL without a base`…) as what is wrong and how to write it.
fn url_problem(reason: &str, value: &str) -> Option<String> {
    let text = match reason {
        "relative URL without a base" => format!(
            "\"{value}\" is not an absolute URL: write it with its scheme, like http://{value} or https://{value}"
        ),
        "empty host" => format!("\"{value}\" has no host after its scheme"),
        "invalid port number" => {
            format!("\"{value}\" has a port that is not a number from 1 to 65535")
        }
        "invalid international domain name" | "invalid domain character" => {
            format!("\"{value}\" has a host name that is not valid")
        }
        "invalid IPv4 address" | "invalid IPv6 address" => {
            format!("\"{value}\" has an IP address that is not valid")
        }
        _ => return None,
    };
    Some(text)
}

/// The `WXGATE_…` variable that sets the key at `segments` (`["server", "listn"]` is
/// `WXGATE_SERVER__LISTN`), if one is set; figment reads the names case-insensitively.
fn variable_for(segments: &[String]) -> Option<String> {
    if segments.is_empty() {
        return None;
    }
    let wanted: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    std::env::vars_os().find_map(|(name, _)| {
        let name = name.into_string().ok()?;
        name.get(..7)
            .filter(|p| p.eq_ignore_ascii_case("WXGATE_"))?;
        let tail = name.get(7..)?;
        let path: Vec<String> = tail.split("__").map(str::to_ascii_lowercase).collect();
        (path == wanted && !tail.eq_ignore_ascii_case("CONFIG")).then_some(name)
    })
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
