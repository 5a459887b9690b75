//! The route table: which upstream and which access policy a request gets, decided by its
//! host and the longest matching path prefix of its normalised path.
//!
//! A route with a host wins over host-less routes (like nginx server blocks); among the
//! routes of one host the longest prefix wins, whatever the order in the file. Prefixes match
//! whole segments: `/activity` and `/activity/` both cover `/activity/x`, neither covers
//! `/activityx`. Lookup costs one hash probe per path segment, not a scan of the table.

pub mod path;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::access::{AccessError, AccessRule, RuleLoader};
use crate::config::{AccessConfig, Config, NonWeChat, RouteConfig, Scope};

/// Where a route's requests go.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Numbers the table's distinct upstreams from 0: routes to the same `scheme://authority`
    /// share it, and with it their pooled connections, found by index rather than by hash.
    pub id: usize,
}

/// One entry of the table, as the request path sees it.
#[derive(Debug)]
pub struct Route {
    /// Position in the file, for messages.
    pub index: usize,
    /// `host/path` or `path`: the label in logs and metrics.
    pub label: String,
    pub host: Option<String>,
    pub prefix: String,
    pub upstream: Upstream,
    pub scope: Scope,
    pub non_wechat: NonWeChat,
    pub allow_snapshot: bool,
    pub timeout: Duration,
    /// The `[[apps]]` entry that logs its visitors in; `None`: `[wechat]`.
    pub app: Option<String>,
    /// Who may enter (the route's list, else its app's); `None`: every WeChat visitor.
    pub access: Option<Arc<AccessRule>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("routes[{index}].upstream: {reason}")]
    Upstream { index: usize, reason: String },
    #[error(transparent)]
    Access(#[from] AccessError),
}

#[derive(Debug, Default)]
pub struct RouteTable {
    by_host: HashMap<String, HashMap<String, Arc<Route>>>,
    any_host: HashMap<String, Arc<Route>>,
    /// What the lenient readings of a path need; empty when every route is public.
    lenient: Lenient,
}

/// Prefix maps for the readings of a path other than its own: lower-cased prefixes (a
/// protected route wins a clash), and protected directory prefixes without their slash.
#[derive(Debug, Default)]
struct Lenient {
    folded: HostPrefixes,
    dirs: HostPrefixes,
    folded_dirs: HostPrefixes,
    /// Some route prefix has an upper-case letter, so even a lower-case path may fold.
    upper_prefix: bool,
}

#[derive(Debug, Default)]
struct HostPrefixes {
    by_host: HashMap<String, HashMap<String, Arc<Route>>>,
    any_host: HashMap<String, Arc<Route>>,
}

impl HostPrefixes {
    /// Files `route` under `key`; on a clash a protected route is kept.
    fn insert(&mut self, key: String, route: &Arc<Route>) {
        let prefixes = match &route.host {
            Some(h) => self.by_host.entry(h.clone()).or_default(),
            None => &mut self.any_host,
        };
        let clash_with_protected = prefixes.get(&key).is_some_and(|r| is_protected(r));
        if !clash_with_protected {
            prefixes.insert(key, route.clone());
        }
    }

    fn is_empty(&self) -> bool {
        self.any_host.is_empty() && self.by_host.is_empty()
    }

    fn longest(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        host.and_then(|h| self.by_host.get(h))
            .and_then(|prefixes| longest_prefix(prefixes, path))
            .or_else(|| longest_prefix(&self.any_host, path))
    }

    fn exact(&self, host: Option<&str>, key: &str) -> Option<&Arc<Route>> {
        host.and_then(|h| self.by_host.get(h))
            .and_then(|prefixes| prefixes.get(key))
            .or_else(|| self.any_host.get(key))
    }
}

impl Lenient {
    fn add(&mut self, route: &Arc<Route>) {
        let lower = route.prefix.to_ascii_lowercase();
        self.upper_prefix |= lower != route.prefix;
        self.folded.insert(lower.clone(), route);
        if let (true, Some(dir)) = (is_protected(route), route.prefix.strip_suffix('/')) {
            if !dir.is_empty() {
                self.dirs.insert(dir.to_owned(), route);
                self.folded_dirs.insert(dir.to_ascii_lowercase(), route);
            }
        }
    }
}

fn is_protected(route: &Route) -> bool {
    route.scope != Scope::Public
}

impl RouteTable {
    pub fn from_config(config: &Config) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        let mut upstream_ids = HashMap::new();
        let mut access = AccessRules::new(config);
        for (index, rc) in config.routes.iter().enumerate() {
            let mut route = build_route(index, rc, config.upstream.timeout)?;
            route.access = access.for_route(index, rc)?;
            let key = (
                route.upstream.scheme.clone(),
                route.upstream.authority.clone(),
            );
            let next = upstream_ids.len();
            route.upstream.id = *upstream_ids.entry(key).or_insert(next);
            let route = Arc::new(route);
            table.lenient.add(&route);
            let prefixes = match &route.host {
                Some(h) => table.by_host.entry(h.clone()).or_default(),
                None => &mut table.any_host,
            };
            prefixes.insert(route.prefix.clone(), route);
        }
        if config.routes.iter().all(|r| r.scope == Scope::Public) {
            table.lenient = Lenient::default();
        }
        Ok(table)
    }

    /// The route for `host` (already lower-cased, without port) and a normalised `path`,
    /// by longest prefix alone; requests go through [`RouteTable::route_for`].
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        host.and_then(|h| self.by_host.get(h))
            .and_then(|prefixes| longest_prefix(prefixes, path))
            .or_else(|| longest_prefix(&self.any_host, path))
    }

    /// The route a request gets, decided as the most lenient upstream would read the path,
    /// so that no reading of it reaches protected content unauthenticated: the path is
    /// matched without `;` parameters (servlet containers serve `/admin;x/page` as
    /// `/admin/page`); and when the path itself is public but its directory form (`/admin`
    /// for a route `/admin/`) or its lower-cased form (a case-insensitive upstream's
    /// `/ADMIN/`) falls under a protected route, that protected route it is.
    /// `path` is a normalised path. Allocates only for `;` parameters and upper case.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let bare = without_parameters(path);
        let exact = self.find(host, &bare);
        if exact.is_some_and(|r| is_protected(r)) {
            return exact;
        }
        // An upstream that keeps `;` parameters reads the path as it is: `/admin/;/open/x`
        // is `/admin/open/x` to a servlet container but under `/admin/` to nginx.
        let literal = matches!(bare, std::borrow::Cow::Owned(_)).then_some(path);
        if let Some(protected) = literal
            .and_then(|literal| self.find(host, literal))
            .filter(|r| is_protected(r))
        {
            return Some(protected);
        }
        if self.lenient.folded.is_empty() {
            return exact;
        }
        self.lenient_reading(host, &bare)
            .or_else(|| literal.and_then(|literal| self.lenient_reading(host, literal)))
            .or(exact)
    }

    /// The protected route a lenient upstream would serve `path` from although its exact
    /// reading is public: its directory form, or its lower-cased form.
    fn lenient_reading(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        if let Some(dir) = self.lenient.dirs.exact(host, path) {
            return Some(dir);
        }
        let has_upper = path.bytes().any(|b| b.is_ascii_uppercase());
        if !(has_upper || self.lenient.upper_prefix) {
            return None;
        }
        let lower = path.to_ascii_lowercase();
        self.lenient
            .folded
            .longest(host, &lower)
            .filter(|r| is_protected(r))
            .or_else(|| self.lenient.folded_dirs.exact(host, &lower))
    }

    /// Route labels by their position in the configuration.
    pub fn labels_in_order(&self) -> Vec<&str> {
        let mut routes: Vec<&Arc<Route>> = self
            .any_host
            .values()
            .chain(self.by_host.values().flat_map(HashMap::values))
            .collect();
        routes.sort_by_key(|r| r.index);
        routes.into_iter().map(|r| r.label.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.any_host.len() + self.by_host.values().map(HashMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn build_route(
    index: usize,
    rc: &RouteConfig,
    default_timeout: Duration,
) -> Result<Route, RouteError> {
    let fail = |reason: String| RouteError::Upstream { index, reason };
    let scheme = Scheme::try_from(rc.upstream.scheme()).map_err(|e| fail(e.to_string()))?;
    let host = rc
        .upstream
        .host_str()
        .ok_or_else(|| fail("no host".into()))?;
    let authority = match rc.upstream.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let authority = Authority::try_from(authority).map_err(|e| fail(e.to_string()))?;
    let label = match &rc.host {
        Some(h) => format!("{h}{}", rc.path),
        None => rc.path.clone(),
    };
    Ok(Route {
        index,
        label,
        host: rc.host.clone(),
        prefix: rc.path.clone(),
        upstream: Upstream {
            scheme,
            authority,
            id: 0,
        },
        scope: rc.scope,
        non_wechat: rc.non_wechat,
        allow_snapshot: rc.allow_snapshot,
        timeout: rc.timeout.unwrap_or(default_timeout),
        app: rc.app.clone(),
        access: None,
    })
}

/// The access rules of the routes: each route's own list, else its app's, each app's list
/// read once and shared by its routes.
struct AccessRules<'a> {
    config: &'a Config,
    loader: RuleLoader,
    /// By app name (`None`: `[wechat]`), once loaded.
    of_apps: HashMap<Option<String>, Option<Arc<AccessRule>>>,
}

impl<'a> AccessRules<'a> {
    fn new(config: &'a Config) -> Self {
        AccessRules {
            config,
            loader: RuleLoader::default(),
            of_apps: HashMap::new(),
        }
    }

    fn for_route(
        &mut self,
        index: usize,
        rc: &RouteConfig,
    ) -> Result<Option<Arc<AccessRule>>, AccessError> {
        if let Some(own) = &rc.access {
            let rule = self.loader.load(&format!("routes[{index}].access"), own)?;
            return Ok(Some(Arc::new(rule)));
        }
        if let Some(rule) = self.of_apps.get(&rc.app) {
            return Ok(rule.clone());
        }
        let (key, of_app): (String, Option<&AccessConfig>) = match &rc.app {
            Some(name) => match self.config.apps.iter().position(|a| &a.name == name) {
                Some(i) => match &self.config.apps[i].access {
                    Some(own) => (format!("apps[{i}].access"), Some(own)),
                    None => (
                        "wechat.access".to_owned(),
                        self.config.wechat.access.as_ref(),
                    ),
                },
                None => ("wechat.access".to_owned(), None),
            },
            None => (
                "wechat.access".to_owned(),
                self.config.wechat.access.as_ref(),
            ),
        };
        let rule = match of_app {
            Some(access) => Some(Arc::new(self.loader.load(&key, access)?)),
            None => None,
        };
        self.of_apps.insert(rc.app.clone(), rule.clone());
        Ok(rule)
    }
}

/// Probes the path and each of its segment boundaries, longest first.
fn longest_prefix<'a>(
    prefixes: &'a HashMap<String, Arc<Route>>,
    path: &str,
) -> Option<&'a Arc<Route>> {
    if prefixes.is_empty() {
        return None;
    }
    if let Some(route) = prefixes.get(path) {
        return Some(route);
    }
    let bytes = path.as_bytes();
    for i in (0..bytes.len()).rev().filter(|&i| bytes[i] == b'/') {
        if let Some(route) = prefixes.get(&path[..=i]) {
            return Some(route);
        }
        if i > 0 {
            if let Some(route) = prefixes.get(&path[..i]) {
                return Some(route);
            }
        }
    }
    None
}

/// The path with each segment's `;parameters` removed and emptied segments merged.
fn without_parameters(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/') {
        let bare = segment.split(';').next().unwrap_or("");
        if !bare.is_empty() {
            out.push('/');
            out.push_str(bare);
        }
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if out.is_empty() || last.split(';').next().is_some_and(str::is_empty) {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// Lower-cases a Host value and drops its port and a trailing dot, so that
/// `M.Example.COM:443` and `m.example.com.` find the routes of `m.example.com`.
pub fn normalize_host(host: &str) -> String {
    let without_port = match host.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(Option<&str>, &str)]) -> RouteTable {
        let mut config = Config::default();
        for (host, path) in routes {
            config.routes.push(RouteConfig {
                host: host.map(str::to_owned),
                path: (*path).to_owned(),
                upstream: url::Url::parse("http://127.0.0.1:9000").unwrap(),
                scope: Scope::Public,
                non_wechat: NonWeChat::Qrcode,
                allow_snapshot: true,
                timeout: None,
                app: None,
                access: None,
            });
        }
        RouteTable::from_config(&config).unwrap()
    }

    #[test]
    fn most_specific_route_wins_whatever_the_order() {
        let t = table(&[
            (None, "/"),
            (None, "/activity"),
            (None, "/activity/2019/"),
            (Some("m.example.com"), "/"),
            (Some("m.example.com"), "/api/"),
        ]);
        let cases = [
            (None, "/", Some("/")),
            (None, "/x", Some("/")),
            (None, "/activity", Some("/activity")),
            (None, "/activity/", Some("/activity")),
            (None, "/activity/a.html", Some("/activity")),
            (None, "/activityx", Some("/")),
            (None, "/activity/2019", Some("/activity")),
            (None, "/activity/2019/", Some("/activity/2019/")),
            (None, "/activity/2019/a/b.html", Some("/activity/2019/")),
            (Some("m.example.com"), "/activity/x", Some("m.example.com/")),
            (Some("m.example.com"), "/api/v1", Some("m.example.com/api/")),
            (Some("m.example.com"), "/api", Some("m.example.com/")),
            (Some("other.example.com"), "/api/v1", Some("/")),
        ];
        for (host, path, want) in cases {
            let got = t.find(host, path).map(|r| r.label.as_str());
            assert_eq!(got, want, "host {host:?} path {path}");
        }
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let t = table(&[(None, "/public/"), (Some("a.example"), "/admin/")]);
        assert!(t.find(None, "/publicity").is_none());
        assert!(t.find(None, "/admin/x").is_none());
        assert!(t.find(Some("b.example"), "/admin/x").is_none());
        assert!(t.find(Some("a.example"), "/admin/x").is_some());
    }

    #[test]
    fn thousand_routes_each_found() {
        let routes: Vec<(Option<&str>, String)> = (0..1000)
            .map(|i| (None, format!("/campaign/{i}/")))
            .collect();
        let refs: Vec<(Option<&str>, &str)> =
            routes.iter().map(|(h, p)| (*h, p.as_str())).collect();
        let t = table(&refs);
        assert_eq!(t.len(), 1000);
        for i in (0..1000).step_by(97) {
            let path = format!("/campaign/{i}/index.html");
            assert_eq!(
                t.find(None, &path).unwrap().prefix,
                format!("/campaign/{i}/")
            );
        }
    }

    fn mixed(routes: &[(&str, Scope)]) -> RouteTable {
        let mut config = Config::default();
        for (path, scope) in routes {
            config.routes.push(RouteConfig {
                host: None,
                path: (*path).to_owned(),
                upstream: url::Url::parse("http://127.0.0.1:9000").unwrap(),
                scope: *scope,
                non_wechat: NonWeChat::Qrcode,
                allow_snapshot: true,
                timeout: None,
                app: None,
                access: None,
            });
        }
        RouteTable::from_config(&config).unwrap()
    }

    #[test]
    fn every_reading_of_a_protected_path_is_protected() {
        let t = mixed(&[
            ("/", Scope::Public),
            ("/admin/", Scope::SnsapiBase),
            ("/admin/public/", Scope::Public),
            ("/Shop/", Scope::SnsapiUserinfo),
        ]);
        let cases = [
            ("/x", "/"),
            ("/admin/x", "/admin/"),
            ("/admin", "/admin/"),
            ("/ADMIN/x", "/admin/"),
            ("/Admin", "/admin/"),
            ("/admin;jsessionid=1/x", "/admin/"),
            ("/admin;x", "/admin/"),
            ("/;x/admin/x", "/admin/"),
            // A parameter-only segment: a servlet container reads /admin/public/x, nginx
            // reads a path under /admin/; the stricter reading wins (found by fuzz/path_route).
            ("/admin/;/public/x", "/admin/"),
            ("/admin/;x/public/x", "/admin/"),
            ("/ADMIN/;/public/x", "/admin/"),
            ("/adminx", "/"),
            ("/administration", "/"),
            ("/admin/public/x", "/admin/public/"),
            // Read case-insensitively this is /admin/public/x: public either way.
            ("/ADMIN/PUBLIC/x", "/"),
            ("/shop/x", "/Shop/"),
            ("/SHOP", "/Shop/"),
            ("/public;x/y", "/"),
        ];
        for (path, want) in cases {
            let got = t.route_for(None, path).map(|r| r.prefix.as_str());
            assert_eq!(got, Some(want), "{path}");
        }
    }

    #[test]
    fn parameters_are_removed_segment_by_segment() {
        for (path, want) in [
            ("/a;x/b", "/a/b"),
            ("/a/b;x", "/a/b"),
            ("/a/b/;x", "/a/b/"),
            ("/;x", "/"),
            ("/a;x/", "/a/"),
            ("/a/b", "/a/b"),
        ] {
            assert_eq!(without_parameters(path), want, "{path}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        for (raw, want) in [
            ("M.Example.COM", "m.example.com"),
            ("m.example.com:8443", "m.example.com"),
            ("m.example.com.", "m.example.com"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
        ] {
            assert_eq!(normalize_host(raw), want);
        }
    }
}
