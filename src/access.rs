//! Who may enter: a route's (or an app's) list of admitted visitors, by openid or unionid,
//! written inline in the configuration or kept in files of one id per line.
//!
//! The lists are read when the gate is built, so a reload of the configuration (SIGHUP, a
//! change of the file, `wxgate` restarting) reads the files again. Lookups are hash-set
//! probes: a list of 100 000 ids costs the same per request as a list of ten.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Problem, Scope};

/// `access = { … }` of a route, of `[wechat]` or of an `[[apps]]` entry. Present: only the
/// visitors named here (by either list) are let in; an empty one lets nobody in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Admitted openids (one Official Account's id of a visitor).
    pub openids: Vec<String>,
    /// Admitted unionids (the same person across the Official Accounts of one owner).
    pub unionids: Vec<String>,
    /// A file of admitted openids, one per line; `#` starts a comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openids_file: Option<PathBuf>,
    /// A file of admitted unionids, one per line; `#` starts a comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionids_file: Option<PathBuf>,
}

impl AccessConfig {
    /// The files these lists name, for those who watch them.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.openids_file
            .iter()
            .chain(&self.unionids_file)
            .map(PathBuf::as_path)
    }
}

/// Why a list could not be read; `key` names where it is configured.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{key}: the list file {} cannot be read: {reason}", path.display())]
    Unreadable {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{key}: line {line} of {} is not an id (expected one openid or unionid per line, letters, digits, '-' and '_'): {shown:?}",
        path.display()
    )]
    BadLine {
        key: String,
        path: PathBuf,
        line: usize,
        shown: String,
    },
    #[error(
        "{key}: {value:?} is not an id (expected letters, digits, '-' and '_', like WeChat's openids and unionids)"
    )]
    BadId { key: String, value: String },
}

impl AccessError {
    /// The configuration key the error is about (`routes[2].access.openids_file`).
    pub fn key(&self) -> &str {
        match self {
            AccessError::Unreadable { key, .. }
            | AccessError::BadLine { key, .. }
            | AccessError::BadId { key, .. } => key,
        }
    }
}

/// The admitted visitors of one route or app.
#[derive(Debug, Default)]
pub struct AccessRule {
    openids: FxHashSet<Box<str>>,
    unionids: FxHashSet<Box<str>>,
}

impl AccessRule {
    /// Whether the visitor with this openid (and unionid, where WeChat gave one) may enter.
    pub fn admits(&self, openid: &str, unionid: Option<&str>) -> bool {
        self.openids.contains(openid) || unionid.is_some_and(|u| self.unionids.contains(u))
    }

    /// Number of ids listed, both kinds.
    pub fn len(&self) -> usize {
        self.openids.len() + self.unionids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds rules, reading each list file once however many routes name it.
#[derive(Default)]
pub struct RuleLoader {
    files: FxHashMap<PathBuf, Arc<Vec<Box<str>>>>,
}

impl RuleLoader {
    /// The rule `config` describes; `key` (`routes[2].access`) names it in errors.
    pub fn load(&mut self, key: &str, config: &AccessConfig) -> Result<AccessRule, AccessError> {
        let mut rule = AccessRule::default();
        for (field, ids, set) in [
            ("openids", &config.openids, &mut rule.openids),
            ("unionids", &config.unionids, &mut rule.unionids),
        ] {
            for id in ids {
                let id = id.trim();
                if !is_id(id) {
                    return Err(AccessError::BadId {
                        key: format!("{key}.{field}"),
                        value: id.to_owned(),
                    });
                }
                set.insert(id.into());
            }
        }
        for (field, file, set) in [
            ("openids_file", &config.openids_file, &mut rule.openids),
            ("unionids_file", &config.unionids_file, &mut rule.unionids),
        ] {
            if let Some(path) = file {
                let ids = self.read(&format!("{key}.{field}"), path)?;
                set.extend(ids.iter().cloned());
            }
        }
        Ok(rule)
    }

    fn read(&mut self, key: &str, path: &Path) -> Result<Arc<Vec<Box<str>>>, AccessError> {
        if let Some(ids) = self.files.get(path) {
            return Ok(ids.clone());
        }
        let text = std::fs::read_to_string(path).map_err(|e| AccessError::Unreadable {
            key: key.to_owned(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let ids = Arc::new(
            parse_list(&text).map_err(|(line, shown)| AccessError::BadLine {
                key: key.to_owned(),
                path: path.to_owned(),
                line,
                shown,
            })?,
        );
        self.files.insert(path.to_owned(), ids.clone());
        Ok(ids)
    }
}

/// One id per line; blank lines and `#` comments (whole-line or after the id) are skipped.
/// The error is the line number and the line (cut short) that is not an id.
fn parse_list(text: &str) -> Result<Vec<Box<str>>, (usize, String)> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or("").trim();
        if id.is_empty() {
            continue;
        }
        if !is_id(id) {
            return Err((n + 1, id.chars().take(40).collect()));
        }
        ids.push(id.into());
    }
    Ok(ids)
}

/// WeChat's openids and unionids are 28 characters of `[A-Za-z0-9_-]`; test accounts and
/// older ones vary in length, so only the alphabet (and a sane length) is checked: what
/// matters is catching a pasted CSV row or a nickname.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What `wxgate check` (and every load) says about the access lists: unreadable files, lines
/// that are not ids, and lists on public routes, where nobody is identified to check.
pub fn problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut loader = RuleLoader::default();
    let mut check = |key: String, access: &AccessConfig| {
        if let Err(e) = loader.load(&key, access) {
            // The error reads "<key>: <what is wrong>"; a problem keeps the two apart.
            let text = e.to_string();
            let prefix = format!("{}: ", e.key());
            let message = text.strip_prefix(&prefix).unwrap_or(&text).to_owned();
            problems.push(Problem::new(e.key().to_owned(), message));
        }
    };
    if let Some(access) = &config.wechat.access {
        check("wechat.access".to_owned(), access);
    }
    for (i, app) in config.apps.iter().enumerate() {
        if let Some(access) = &app.access {
            check(format!("apps[{i}].access"), access);
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(access) = &route.access {
            check(format!("routes[{i}].access"), access);
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        if route.access.is_some() && route.scope == Scope::Public {
            problems.push(Problem::new(
                format!("routes[{i}].access"),
                "a public route identifies nobody, so it has nobody to admit; give the route \
                 scope = \"snsapi_base\" (or snsapi_userinfo) or remove the list",
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_admit_by_openid_or_unionid() {
        let config = AccessConfig {
            openids: vec!["oAAAA".into()],
            unionids: vec!["oUUUU".into()],
            ..AccessConfig::default()
        };
        let rule = RuleLoader::default()
            .load("routes[0].access", &config)
            .unwrap();
        assert!(rule.admits("oAAAA", None));
        assert!(rule.admits("oOther", Some("oUUUU")));
        assert!(!rule.admits("oOther", None));
        assert!(!rule.admits("oUUUU", None), "a unionid is not an openid");
        assert!(!rule.admits("oOther", Some("oAAAA")), "nor the reverse");
    }

    #[test]
    fn files_have_comments_and_blank_lines() {
        let ids = parse_list("# admins\noAAAA\n\n  oBBBB  # Li Lei\r\n").unwrap();
        assert_eq!(ids, vec![Box::from("oAAAA"), Box::from("oBBBB")]);
        assert_eq!(
            parse_list("oAAAA\noBBBB,oCCCC\n"),
            Err((2, "oBBBB,oCCCC".to_owned()))
        );
    }

    #[test]
    fn a_bad_inline_id_names_its_key() {
        let config = AccessConfig {
            openids: vec!["o A".into()],
            ..AccessConfig::default()
        };
        let err = RuleLoader::default()
            .load("routes[3].access", &config)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("routes[3].access.openids: \"o A\""),
            "{err}"
        );
    }
}
