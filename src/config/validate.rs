//! Checks that a well-typed configuration also makes sense: URLs of the right shape, secrets
//! long enough, route paths already normalised, no duplicate routes.

use std::collections::HashSet;
use std::time::Duration;

use super::credentials::{app_secret_problem, is_appid, is_placeholder};
use super::{Algorithm, Config, Problem, Scope, StoreKind};
use crate::route::path;

/// Longest identity token lifetime accepted: a leaked token is worth no more than this.
const MAX_IDENTITY_TTL: Duration = Duration::from_secs(600);

/// Every problem of `config`, in file order; empty when it is usable.
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    server(config, &mut p);
    if config.default_app_needed() {
        wechat(config, &mut p);
    }
    if config.needs_login() {
        session(config, &mut p);
        identity(config, &mut p);
    } else if crate::jssdk::Jssdk::wanted(config) {
        // The JS-SDK keeps its shared ticket in the session store.
        session(config, &mut p);
    }
    apps(config, &mut p);
    routes(config, &mut p);
    p.extend(crate::access::problems(config));
    p
}

/// `[[apps]]`: unique names of the allowed shape, each with its own appid and secret; and
/// every route's `app` one of them.
fn apps(c: &Config, p: &mut Vec<Problem>) {
    let mut names = HashSet::new();
    for (n, app) in c.apps.iter().enumerate() {
        let key = |field: &str| format!("apps[{n}].{field}");
        let shaped = !app.name.is_empty()
            && app.name.len() <= 32
            && app
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !shaped {
            p.push(Problem::new(
                key("name"),
                format!("\"{}\": 1–32 lower-case letters, digits or '-'", app.name),
            ));
        }
        if !names.insert(app.name.as_str()) {
            p.push(Problem::new(
                key("name"),
                format!("\"{}\" is used twice", app.name),
            ));
        }
        if app.appid.is_empty() {
            p.push(Problem::new(key("appid"), "required"));
        } else if !is_appid(&app.appid) {
            p.push(Problem::new(key("appid"), not_an_appid(&app.appid)));
        }
        let env = format!("WXGATE_APPS__{n}__SECRET");
        if app.secret.is_empty() {
            p.push(Problem::new(key("secret"), format!("required (set {env})")));
        } else if let Some(m) = app_secret_problem(app.secret.expose(), &env) {
            p.push(Problem::new(key("secret"), m));
        }
    }
    for (n, r) in c.routes.iter().enumerate() {
        if let Some(app) = &r.app {
            if !names.contains(app.as_str()) {
                p.push(Problem::new(
                    format!("routes[{n}].app"),
                    format!("no [[apps]] entry is named \"{app}\""),
                ));
            }
        }
    }
}

fn server(c: &Config, p: &mut Vec<Problem>) {
    match &c.server.public_url {
        Some(url) => {
            if let Err(m) = origin_only(url) {
                p.push(Problem::new("server.public_url", m));
            } else if c.needs_login() {
                reachable_by_wechat(url, real_wechat(c), c.session.cookie_secure, p);
            }
        }
        None if c.needs_login() => p.push(Problem::new(
            "server.public_url",
            "required with a WeChat login (a route with scope snsapi_base or snsapi_userinfo, or wechat.appid for forward-auth): it builds WeChat's redirect_uri",
        )),
        None => {}
    }
    if let Some(tls) = &c.server.tls {
        readable(&tls.cert, "server.tls.cert", p);
        readable(&tls.key, "server.tls.key", p);
    }
    let l = &c.server.limits;
    positive(
        l.max_header_bytes as u64,
        "server.limits.max_header_bytes",
        p,
    );
    positive(l.max_headers as u64, "server.limits.max_headers", p);
    positive(l.max_uri_bytes as u64, "server.limits.max_uri_bytes", p);
    positive(l.max_connections as u64, "server.limits.max_connections", p);
    nonzero(
        l.header_read_timeout,
        "server.limits.header_read_timeout",
        p,
    );
    nonzero(l.idle_timeout, "server.limits.idle_timeout", p);
    if l.login_rate > 0 && l.login_burst == 0 {
        p.push(Problem::new(
            "server.limits.login_burst",
            "must be at least 1 while login_rate is on (0 would refuse every login)",
        ));
    }
    for (n, origin) in c.server.websocket_origins.iter().enumerate() {
        if let Err(m) = origin_only(origin) {
            p.push(Problem::new(format!("server.websocket_origins[{n}]"), m));
        }
    }
    nonzero(c.upstream.connect_timeout, "upstream.connect_timeout", p);
    nonzero(c.upstream.timeout, "upstream.timeout", p);
}

fn wechat(c: &Config, p: &mut Vec<Problem>) {
    let w = &c.wechat;
    if w.appid.is_empty() {
        p.push(Problem::new(
            "wechat.appid",
            "required when a route needs a WeChat login",
        ));
    } else if !is_appid(&w.appid) {
        p.push(Problem::new("wechat.appid", not_an_appid(&w.appid)));
    }
    if w.secret.is_empty() {
        p.push(Problem::new(
            "wechat.secret",
            "required when a route needs a WeChat login (set WXGATE_WECHAT__SECRET)",
        ));
    } else if let Some(m) = app_secret_problem(w.secret.expose(), "WXGATE_WECHAT__SECRET") {
        p.push(Problem::new("wechat.secret", m));
    }
    for (key, url) in [
        ("wechat.authorize_url", &w.authorize_url),
        ("wechat.api_base", &w.api_base),
    ] {
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            p.push(Problem::new(
                key,
                format!("\"{url}\" is not an http(s) URL"),
            ));
        }
    }
    if !matches!(w.lang.as_str(), "zh_CN" | "zh_TW" | "en") {
        p.push(Problem::new(
            "wechat.lang",
            format!(
                "unknown language \"{}\", expected zh_CN | zh_TW | en",
                w.lang
            ),
        ));
    }
    nonzero(w.timeout, "wechat.timeout", p);
}

fn session(c: &Config, p: &mut Vec<Problem>) {
    let s = &c.session;
    if s.secret.expose().len() < 32 {
        p.push(Problem::new(
            "session.secret",
            "must be at least 32 bytes (set WXGATE_SESSION__SECRET, e.g. `openssl rand -base64 48`)",
        ));
    } else if is_placeholder(s.secret.expose()) {
        p.push(Problem::new(
            "session.secret",
            "is a placeholder: anyone who read the example can forge state cookies and read stored sessions; set WXGATE_SESSION__SECRET (e.g. `openssl rand -base64 48`)",
        ));
    }
    if s.cookie_name.is_empty() || !s.cookie_name.bytes().all(is_token_byte) {
        p.push(Problem::new(
            "session.cookie_name",
            format!("\"{}\" is not a valid cookie name", s.cookie_name),
        ));
    }
    if s.cookie_name.starts_with("__Host-") || s.cookie_name.starts_with("__Secure-") {
        p.push(Problem::new(
            "session.cookie_name",
            "must not start with __Host- or __Secure-: the gateway adds the prefix itself (see cookie_secure and cookie_domain)",
        ));
    }
    if let Some(domain) = &s.cookie_domain {
        cookie_domain(domain, c.server.public_url.as_ref(), p);
    }
    if s.store == StoreKind::Redis {
        let url = s.redis_url.expose();
        let schemes = [
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
            p.push(Problem::new(
                "session.redis_url",
                "must start with redis://, rediss://, redis+sentinel://, redis+cluster:// \
                 or rediss+cluster://",
            ));
        }
    }
    if s.store == StoreKind::Redb {
        if s.path.as_os_str().is_empty() {
            p.push(Problem::new(
                "session.path",
                "required with store = \"redb\"",
            ));
        } else if let Err(m) = super::store_path::writable(&s.path) {
            p.push(Problem::new("session.path", m));
        }
    }
    nonzero(s.ttl, "session.ttl", p);
    nonzero(s.max_lifetime, "session.max_lifetime", p);
    nonzero(s.store_timeout, "session.store_timeout", p);
}

fn identity(c: &Config, p: &mut Vec<Problem>) {
    let i = &c.identity;
    if http::HeaderName::from_bytes(i.header.as_bytes()).is_err() {
        p.push(Problem::new(
            "identity.header",
            format!("\"{}\" is not a valid header name", i.header),
        ));
    }
    // Loading the keys is the only complete check of a key file: PEM, type, algorithm.
    if i.algorithm == Algorithm::HS256 && is_placeholder(i.secret.expose()) {
        p.push(Problem::new(
            "identity.secret",
            "is a placeholder: anyone who read the example can sign identities your upstreams trust; set WXGATE_IDENTITY__SECRET (e.g. `openssl rand -base64 48`) or use an asymmetric algorithm with key_file",
        ));
    }
    let (current, previous) = i.key_sources();
    if let Err(e) = crate::identity::KeySet::load(&current, &previous) {
        let key = match i.algorithm {
            Algorithm::HS256 => "identity.secret",
            _ => "identity.key_file",
        };
        p.push(Problem::new(key, e.to_string()));
    }
    if i.ttl < Duration::from_secs(10) || i.ttl > MAX_IDENTITY_TTL {
        // Short-lived tokens bound what a token leaked by an upstream's log is worth.
        p.push(Problem::new("identity.ttl", "must be between 10s and 10m"));
    }
}

fn routes(c: &Config, p: &mut Vec<Problem>) {
    // Forward-auth needs no route of its own: the proxy in front asks /_wxgate/auth.
    if c.routes.is_empty() && c.wechat.appid.is_empty() {
        p.push(Problem::new(
            "routes",
            "at least one [[routes]] entry is required (or wechat.appid alone, for forward-auth behind nginx, Traefik or Caddy)",
        ));
    }
    let mut seen = HashSet::new();
    for (n, r) in c.routes.iter().enumerate() {
        let key = |field: &str| format!("routes[{n}].{field}");
        match path::normalize(&r.path) {
            Ok(norm) if norm != r.path => p.push(Problem::new(
                key("path"),
                format!("\"{}\" is not in normal form, write \"{norm}\"", r.path),
            )),
            Ok(_) => {}
            Err(e) => p.push(Problem::new(key("path"), format!("\"{}\": {e}", r.path))),
        }
        if r.path.starts_with("/_wxgate") {
            p.push(Problem::new(
                key("path"),
                "/_wxgate/ is reserved for the gateway's own endpoints",
            ));
        }
        if let Some(host) = &r.host {
            if !valid_host(host) {
                p.push(Problem::new(
                    key("host"),
                    format!("\"{host}\" is not a host name (lower case, no port, no scheme)"),
                ));
            }
        }
        if let Err(m) = origin_only(&r.upstream) {
            p.push(Problem::new(key("upstream"), m));
        }
        if r.scope == Scope::Public && !r.allow_snapshot {
            // Harmless, but a sign the operator meant a protected route.
            tracing::debug!(route = n, "allow_snapshot has no effect on a public route");
        }
        if !seen.insert((r.host.clone(), r.path.clone())) {
            p.push(Problem::new(
                key("path"),
                format!(
                    "another route already has host {:?} and path \"{}\"",
                    r.host, r.path
                ),
            ));
        }
    }
}

fn not_an_appid(appid: &str) -> String {
    format!(
        "\"{appid}\" is not an AppID: WeChat's are wx followed by 16 hex digits (公众平台 → 设置与开发 → 基本配置 → 开发者ID)"
    )
}

/// What WeChat and the visitor's browser need of `public_url`: no port on a public host
/// (WeChat matches redirect_uri against the 网页授权域名, which has none, and answers 10003),
/// and https when the cookies are Secure (a browser drops Secure cookies sent over http, so
/// the state cookie is gone at the callback). Loopback hosts are exempt: browsers treat
/// them as secure, and no WeChat reaches them anyway.
fn reachable_by_wechat(
    url: &url::Url,
    real_wechat: bool,
    cookie_secure: bool,
    p: &mut Vec<Problem>,
) {
    if is_loopback(url) {
        return;
    }
    // The port rule is WeChat's own: a mock or staging WeChat (the demo on a LAN address)
    // takes any port.
    if let Some(port) = url.port().filter(|_| real_wechat) {
        p.push(Problem::new(
            "server.public_url",
            format!(
                "\"{}\" carries port {port}: the 网页授权域名 has no port, so WeChat answers 10003 (redirect_uri域名与后台配置不一致); serve on 443 behind the domain and write \"{}://{}\"",
                url.origin().ascii_serialization(),
                url.scheme(),
                url.host_str().unwrap_or_default()
            ),
        ));
    }
    if url.scheme() == "http" && cookie_secure {
        p.push(Problem::new(
            "session.cookie_secure",
            format!(
                "true with an http:// server.public_url (\"{}\"): browsers drop Secure cookies over http, so every login would end on 登录已失效; serve https (public_url = \"https://{}\") or, for a trial without TLS, set cookie_secure = false",
                url.origin().ascii_serialization(),
                url.host_str().unwrap_or_default()
            ),
        ));
    }
}

/// Whether logins go to WeChat's own authorize page (not a mock or staging stand-in).
fn real_wechat(c: &Config) -> bool {
    c.wechat.authorize_url.host_str() == Some("open.weixin.qq.com")
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An origin: http(s), a host, no path beyond `/`, no query, fragment or userinfo.
fn origin_only(url: &url::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("\"{url}\" must be an http:// or https:// URL"));
    }
    if url.host_str().is_none() {
        return Err(format!("\"{url}\" has no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "\"{url}\" must be an origin only, without path or query"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "\"{}\" must not carry credentials",
            url.origin().ascii_serialization()
        ));
    }
    Ok(())
}

/// A cookie Domain must be a host name that `public_url`'s host lies in, or browsers drop
/// the cookie and every login loops.
fn cookie_domain(domain: &str, public_url: Option<&url::Url>, p: &mut Vec<Problem>) {
    let key = "session.cookie_domain";
    let bare = domain.strip_prefix('.').unwrap_or(domain);
    if !valid_host(bare) || !bare.contains('.') {
        p.push(Problem::new(
            key,
            format!("\"{domain}\" is not a domain name (lower case, at least two labels, no port)"),
        ));
        return;
    }
    if let Some(host) = public_url.and_then(url::Url::host_str) {
        let inside = host == bare || host.ends_with(&format!(".{bare}"));
        if !inside {
            p.push(Problem::new(
                key,
                format!("\"{domain}\" does not contain server.public_url's host \"{host}\""),
            ));
        }
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !h.starts_with('.')
        && !h.ends_with('.')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn readable(file: &std::path::Path, key: &str, p: &mut Vec<Problem>) {
    if let Err(e) = std::fs::File::open(file) {
        p.push(Problem::new(
            key,
            format!("cannot read {}: {e}", file.display()),
        ));
    }
}

fn positive(v: u64, key: &str, p: &mut Vec<Problem>) {
    if v == 0 {
        p.push(Problem::new(key, "must be greater than 0"));
    }
}

fn nonzero(d: Duration, key: &str, p: &mut Vec<Problem>) {
    if d.is_zero() {
        p.push(Problem::new(key, "must be longer than 0s"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    fn redis_url_problems(url: &str) -> Vec<String> {
        let mut config = Config::default();
        config.session.store = StoreKind::Redis;
        config.session.redis_url = Secret::new(url);
        let mut problems = Vec::new();
        session(&config, &mut problems);
        problems
            .into_iter()
            .filter(|p| p.key == "session.redis_url")
            .map(|p| p.message)
            .collect()
    }

    #[test]
    fn redis_url_takes_one_server_sentinel_or_a_cluster() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "rediss://:pw@redis.internal:6380/2",
            "redis+sentinel://s1:26379,s2:26379/mymaster",
            "redis+cluster://n1:6379,n2:6379,n3:6379",
            "rediss+cluster://:pw@n1:6380",
        ] {
            assert!(redis_url_problems(good).is_empty(), "{good} refused");
        }
        for bad in ["http://n1:6379", "cluster://n1:6379", "n1:6379"] {
            let problems = redis_url_problems(bad);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(problems[0].contains("redis+cluster://"), "{problems:?}");
        }
    }
}
