//! The deployment files in `deploy/` checked against the code, so that they cannot drift from
//! it: the ports and probe paths the gateway really serves, the configuration they mount
//! (loaded and validated by wxgate's own loader, as `wxgate check` does at start), the
//! `WXGATE_*` names they set, shutdown timing against `server.drain_timeout`, the hardening of
//! the container and the systemd unit, and the metric names the Grafana dashboard queries.
//! Docker itself is not run here: the Dockerfile and Compose file are checked as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use wxgate::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_wxgate");

// ---------------------------------------------------------------------------------------------
// Reading the files

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every document of a YAML file, as JSON values (one model for YAML and JSON alike).
fn yaml_documents(path: &str) -> Vec<Value> {
    let text = read(path);
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml(path: &str) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{path}: expected one YAML document");
    docs.remove(0)
}

/// The value at a JSON pointer, or a failure naming the file and the place.
fn at<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{what}: {pointer} is missing"))
}

fn text_at<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a str {
    at(value, pointer, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {pointer} is not a string"))
}

fn array_at<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a Vec<Value> {
    at(value, pointer, what)
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {pointer} is not a list"))
}

fn default_ports() -> (u16, u16) {
    let config = Config::default();
    (config.server.listen.port(), config.admin.listen.port())
}

/// `45s`, `1m 30s`, or a bare number of seconds (systemd's and Compose's spellings).
fn duration(text: &str, what: &str) -> Duration {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{what}: {text:?}: {e}"))
}

/// The drain times the deployment files must outwait: the default and the example's.
fn drain_timeouts() -> Vec<Duration> {
    let example: Config = toml::from_str(&read("config/wxgate.toml")).expect("example config");
    vec![
        Config::default().server.drain_timeout,
        example.server.drain_timeout,
    ]
}

/// Whether a tool from outside Rust is here; if not, prints why the test skips. Under
/// `CI=true` a missing tool fails instead: `scripts/test` installs it.
fn tool(command: &str, package: &str) -> bool {
    if Command::new(command).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{command} is required under CI=true (Debian package {package}; ./scripts/test installs it)"
    );
    eprintln!("skipping: {command} not found (install Debian's {package}, or run ./scripts/test)");
    false
}

/// Whether every `key: value` of a selector is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let (Some(selector), Some(labels)) = (selector.as_object(), labels.as_object()) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// Running the real loader

/// Values the tests put where an operator puts real secrets.
const TEST_SESSION_SECRET: &str = "test-session-secret-0123456789abcdef0123456789";
const TEST_IDENTITY_SECRET: &str = "test-identity-secret-0123456789abcdef012345678";
const TEST_REDIS_PASSWORD: &str = "testredispassword";

struct Checked {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `wxgate check --config FILE` with exactly `env` as its environment: `config::load` (the
/// file, then `WXGATE_*` variables) and `config::validate`, as the gateway runs them at start.
/// A child process rather than a call, so that the secrets go into its environment and this
/// multi-threaded test binary never changes its own (`set_var` races with other tests).
fn wxgate_check(config: &Path, env: &BTreeMap<String, String>) -> Checked {
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_clear()
        .envs(env)
        .output()
        .expect("run wxgate check");
    Checked {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The effective configuration `wxgate check` accepted (secrets redacted).
fn effective_config(config: &Path, env: &BTreeMap<String, String>, what: &str) -> Config {
    let checked = wxgate_check(config, env);
    assert!(
        checked.ok,
        "{what}: wxgate check refused the configuration:\n{}",
        checked.stderr
    );
    toml::from_str(&checked.stdout)
        .unwrap_or_else(|e| panic!("{what}: effective configuration unreadable: {e}"))
}

/// An ES256 identity key written by `wxgate keygen`, standing in for the operator's.
fn identity_key(dir: &Path) -> PathBuf {
    let path = dir.join("identity.pem");
    let out = Command::new(BIN)
        .args(["keygen", "--algorithm", "ES256", "--out"])
        .arg(&path)
        .output()
        .expect("run wxgate keygen");
    assert!(out.status.success(), "wxgate keygen failed");
    path
}

/// Every key path of a configuration with its optional parts filled in, `.`-joined.
fn config_keys() -> BTreeSet<String> {
    let mut config = Config::default();
    config.server.public_url = Some(url::Url::parse("https://m.example.com").expect("url"));
    config.server.tls = Some(wxgate::config::TlsConfig {
        cert: "c".into(),
        key: "k".into(),
    });
    let value = serde_json::to_value(&config).expect("serialize the default config");
    let mut keys = BTreeSet::new();
    collect_keys("", &value, &mut keys);
    keys
}

fn collect_keys(prefix: &str, value: &Value, keys: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys.insert(key.clone());
            collect_keys(&key, v, keys);
        }
    }
}

/// `WXGATE_SESSION__REDIS_URL` → `session.redis_url`, as the loader's figment provider reads it.
fn config_key_of(variable: &str) -> Option<String> {
    let path = variable.strip_prefix("WXGATE_")?;
    Some(
        path.split("__")
            .collect::<Vec<_>>()
            .join(".")
            .to_lowercase(),
    )
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.split_once(' ').unwrap_or((current.as_str(), ""));
                instructions.push((word.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

fn docker_all(instruction: &str) -> Vec<String> {
    dockerfile()
        .into_iter()
        .filter(|(word, _)| word == instruction)
        .map(|(_, rest)| rest)
        .collect()
}

fn docker_one(instruction: &str) -> String {
    let mut all = docker_all(instruction);
    assert_eq!(
        all.len(),
        1,
        "deploy/Dockerfile: expected one {instruction}"
    );
    all.remove(0)
}

fn exec_form(instruction: &str) -> Vec<String> {
    serde_json::from_str(&docker_one(instruction)).unwrap_or_else(|e| {
        panic!("deploy/Dockerfile: {instruction} must be in exec form (a JSON list): {e}")
    })
}

/// The uid the image runs as.
fn image_uid() -> u64 {
    let user = docker_one("USER");
    let uid = user.split(':').next().unwrap_or_default();
    uid.parse()
        .unwrap_or_else(|_| panic!("deploy/Dockerfile: USER {user} is not numeric"))
}

/// The configuration path of the image's default command (`run --config PATH`).
fn image_config_path() -> String {
    config_argument(&exec_form("CMD"), "deploy/Dockerfile CMD")
}

fn config_argument(args: &[String], what: &str) -> String {
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{what}: no --config in {args:?}"));
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{what}: not `run`"
    );
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{what}: --config without a path"))
        .clone()
}

fn minor_version(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged_on_the_gateways_ports() {
    let froms = docker_all("FROM");
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    let build = froms[0].to_lowercase();
    let rust = build
        .strip_prefix("rust:")
        .and_then(|r| r.split('-').next())
        .unwrap_or_else(|| panic!("build stage is not an official rust image: {build}"));
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let msrv = manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    assert!(
        minor_version(rust) >= minor_version(msrv),
        "the build image's Rust {rust} is older than Cargo.toml's rust-version {msrv}"
    );
    assert!(build.ends_with(" as build"), "build stage is named `build`");
    assert!(
        froms[1] == "debian:bookworm-slim" || froms[1].starts_with("gcr.io/distroless/cc"),
        "runtime stage: {}",
        froms[1]
    );
    let runs = docker_all("RUN").join("\n");
    assert!(
        runs.contains("cargo build --profile dist --locked"),
        "the image ships the dist profile: {runs}"
    );
    assert!(
        runs.contains("--no-default-features"),
        "the image has no dev tools (mock WeChat, demo, fuzzing glue): {runs}"
    );
    assert!(
        runs.contains("ca-certificates"),
        "HTTPS to WeChat needs CA roots"
    );

    let uid = image_uid();
    assert!(
        uid >= 10000,
        "the image runs as uid {uid}, not an unprivileged one"
    );
    let exposed: BTreeSet<u16> = docker_one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    let (http, admin) = default_ports();
    assert_eq!(
        exposed,
        BTreeSet::from([http, admin]),
        "EXPOSE vs Config::default()"
    );
    assert_eq!(exec_form("ENTRYPOINT"), ["wxgate"]);
    assert_eq!(image_config_path(), "/etc/wxgate/wxgate.toml");
    assert!(docker_one("VOLUME").contains("/data"), "redb's volume");
    assert!(
        docker_all("HEALTHCHECK").is_empty(),
        "no HEALTHCHECK: the slim image has no HTTP client to run one"
    );
}

/// A `.dockerignore` pattern against a context-relative path (`*`, `**/`, trailing `/`).
fn ignored(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_end_matches('/');
    let anywhere = pattern.strip_prefix("**/");
    let parts: Vec<&str> = path.split('/').collect();
    let pattern_parts: Vec<&str> = anywhere.unwrap_or(pattern).split('/').collect();
    let starts: Vec<usize> = match anywhere {
        Some(_) => (0..parts.len()).collect(),
        None => vec![0],
    };
    starts.into_iter().any(|start| {
        parts.len() >= start + pattern_parts.len()
            && pattern_parts
                .iter()
                .zip(&parts[start..])
                .all(|(p, s)| glob_component(p, s))
    })
}

fn glob_component(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((before, after)) => {
            name.len() >= before.len() + after.len()
                && name.starts_with(before)
                && name.ends_with(after)
        }
    }
}

#[test]
fn dockerignore_keeps_the_build_context_small_but_complete() {
    let text = read(".dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for heavy in ["target/debug/wxgate", ".git/HEAD", "deploy/.env"] {
        assert!(
            patterns.iter().any(|p| ignored(p, heavy)),
            "{heavy} would be sent to the Docker daemon"
        );
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "src/lib.rs",
        "deploy/Dockerfile",
    ] {
        assert!(repo(needed).exists(), "{needed} moved; update this test");
        let by: Vec<_> = patterns.iter().filter(|p| ignored(p, needed)).collect();
        assert!(
            by.is_empty(),
            "{needed} is excluded from the context by {by:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Docker Compose

/// Compose's `${NAME}`, `${NAME:?err}`, `${NAME:-default}` (and `-`/`?` forms), `$$`.
fn interpolate(text: &str, vars: &BTreeMap<&str, &str>, what: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("{what}: unclosed ${{ in {text}"));
            let expr = &body[..end];
            let name_end = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, modifier) = expr.split_at(name_end);
            let value = match (vars.get(name), modifier.trim_start_matches(':')) {
                (Some(v), _) => (*v).to_owned(),
                (None, m) if m.starts_with('-') => m[1..].to_owned(),
                (None, _) => panic!("{what}: ${{{name}}} has no test value; add one"),
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            panic!("{what}: write ${{NAME}} rather than a bare $ in {text}");
        }
    }
    out.push_str(rest);
    out
}

/// What `deploy/.env` holds in these tests.
fn compose_variables() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("WXGATE_WECHAT__SECRET", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        ("WXGATE_SESSION__SECRET", TEST_SESSION_SECRET),
        ("WXGATE_IDENTITY__SECRET", TEST_IDENTITY_SECRET),
        ("REDIS_PASSWORD", TEST_REDIS_PASSWORD),
    ])
}

fn compose() -> Value {
    yaml("deploy/docker-compose.yml")
}

/// A service's `environment` (map or `KEY=value` list), interpolated.
fn compose_environment(service: &Value, what: &str) -> BTreeMap<String, String> {
    let vars = compose_variables();
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let raw: Vec<(String, String)> = match service.get("environment") {
        None => Vec::new(),
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("{what}: environment is {other}"),
    };
    raw.into_iter()
        .map(|(k, v)| (k, interpolate(&v, &vars, what)))
        .collect()
}

/// Container ports of a service's `ports` (`"HOST:CONTAINER"`, `"IP:HOST:CONTAINER"`), with
/// the host address each is published on (`None`: every interface).
fn compose_ports(service: &Value, what: &str) -> BTreeMap<u16, Option<String>> {
    array_at(service, "/ports", what)
        .iter()
        .map(|p| {
            let spec = p.as_str().unwrap_or_else(|| panic!("{what}: port {p}"));
            let parts: Vec<&str> = spec.split(':').collect();
            let container = parts[parts.len() - 1]
                .trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("{what}: port {spec}"));
            let ip = (parts.len() == 3).then(|| parts[0].to_owned());
            (container, ip)
        })
        .collect()
}

/// The host file a service sees at `target`, through a bind mount of it or of a directory
/// above it (short volume syntax), relative to deploy/.
fn compose_mount_source(service: &Value, target: &str, what: &str) -> String {
    array_at(service, "/volumes", what)
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            let below = target.strip_prefix(*parts.get(1)?)?;
            (below.is_empty() || below.starts_with('/')).then(|| format!("{}{below}", parts[0]))
        })
        .unwrap_or_else(|| panic!("{what}: nothing is mounted at {target}"))
}

#[test]
fn compose_runs_the_image_with_its_configuration_and_secrets_and_shares_sessions_in_redis() {
    let what = "deploy/docker-compose.yml";
    let compose = compose();
    let services = at(&compose, "/services", what)
        .as_object()
        .expect("services");
    let wxgate = &services["wxgate"];

    // The image is the Dockerfile's, built from the repository root.
    let context = repo("deploy").join(text_at(wxgate, "/build/context", what));
    let dockerfile = text_at(wxgate, "/build/dockerfile", what);
    assert!(
        context.join("Cargo.toml").exists(),
        "build context is not the repository root"
    );
    assert!(
        context.join(dockerfile).exists(),
        "{dockerfile} not in the context"
    );

    // The configuration file is mounted where the command reads it.
    let command: Vec<String> =
        serde_json::from_value(at(wxgate, "/command", what).clone()).expect("command in exec form");
    let config_path = config_argument(&command, what);
    assert_eq!(
        config_path,
        image_config_path(),
        "compose and the image's CMD disagree"
    );
    let source = compose_mount_source(wxgate, &config_path, what);
    let config_file = repo("deploy").join(source);
    assert!(
        config_file.exists(),
        "{} is not there",
        config_file.display()
    );

    // It loads, with the environment Compose gives, through the real loader and validator.
    let env = compose_environment(wxgate, what);
    let config = effective_config(&config_file, &env, what);
    assert_eq!(
        config.session.store,
        wxgate::config::StoreKind::Redis,
        "compose runs Redis for the sessions"
    );

    // Published ports are the listeners' ports, the defaults, and admin stays on loopback.
    let ports = compose_ports(wxgate, what);
    let (http, admin) = default_ports();
    assert_eq!(
        ports.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([http, admin])
    );
    assert_eq!(config.server.listen.port(), http);
    assert_eq!(config.admin.listen.port(), admin);
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "admin.listen must accept connections from outside the container"
    );
    assert_eq!(
        ports[&admin].as_deref(),
        Some("127.0.0.1"),
        "the admin port is published on every interface"
    );

    // Every upstream and the Redis URL name a service of this file, on the port it serves.
    let redis_url = url::Url::parse(&env["WXGATE_SESSION__REDIS_URL"]).expect("redis url");
    assert!(
        services.contains_key(redis_url.host_str().unwrap_or_default()),
        "{redis_url} is not a compose service"
    );
    assert_eq!(redis_url.port_or_known_default(), Some(6379));
    assert_eq!(redis_url.password(), Some(TEST_REDIS_PASSWORD));
    for route in &config.routes {
        let host = route.upstream.host_str().unwrap_or_default();
        assert!(
            services.contains_key(host),
            "route upstream {host} is not a service"
        );
        assert_eq!(
            route.upstream.port_or_known_default(),
            Some(80),
            "whoami serves :80"
        );
    }

    // The same user as the image, and time to drain before the SIGKILL.
    let user = text_at(wxgate, "/user", what);
    assert_eq!(
        user.split(':').next(),
        Some(image_uid().to_string().as_str())
    );
    let grace = duration(text_at(wxgate, "/stop_grace_period", what), what);
    assert!(
        grace > config.server.drain_timeout,
        "stop_grace_period {grace:?} ≤ drain_timeout"
    );
}

#[test]
fn compose_env_example_lists_exactly_the_variables_compose_requires() {
    let compose = read("deploy/docker-compose.yml");
    let required: BTreeSet<&str> = compose
        .split("${")
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
        })
        .collect();
    let example = read("deploy/.env.example");
    let listed: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    assert_eq!(
        required, listed,
        "deploy/.env.example vs docker-compose.yml"
    );
    assert_eq!(
        listed,
        compose_variables().keys().copied().collect(),
        "test values"
    );
    assert!(
        read("deploy/.gitignore")
            .lines()
            .any(|l| l.trim() == ".env")
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

struct Kube {
    objects: Vec<Value>,
}

impl Kube {
    fn load() -> Self {
        let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
        let objects = array_at(&kustomization, "/resources", "kustomization.yaml")
            .iter()
            .flat_map(|r| {
                let file = r.as_str().expect("resource file name");
                yaml_documents(&format!("deploy/kubernetes/{file}"))
            })
            .collect();
        Self { objects }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
    }

    fn deployment(&self) -> &Value {
        self.get("Deployment", "wxgate")
    }

    fn container(&self) -> &Value {
        let containers = array_at(
            self.deployment(),
            "/spec/template/spec/containers",
            "Deployment",
        );
        containers
            .iter()
            .find(|c| c["name"] == "wxgate")
            .expect("container wxgate")
    }

    fn pod_labels(&self) -> &Value {
        at(
            self.deployment(),
            "/spec/template/metadata/labels",
            "Deployment",
        )
    }

    /// A named container port (or a number) of the wxgate container.
    fn container_port(&self, port: &Value) -> u16 {
        let number = match port {
            Value::String(name) => array_at(self.container(), "/ports", "container")
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
                .as_u64(),
            other => other.as_u64(),
        };
        number
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("port {port}"))
    }

    fn config_map_text(&self) -> &str {
        text_at(
            self.get("ConfigMap", "wxgate"),
            "/data/wxgate.toml",
            "ConfigMap",
        )
    }

    /// The container's environment as the kubelet builds it: secret references resolved
    /// (empty values replaced through `fill` when given), `$(NAME)` expanded from earlier ones.
    fn environment(&self, fill: bool) -> BTreeMap<String, String> {
        let secret = self.get("Secret", "wxgate");
        let mut env = BTreeMap::new();
        for entry in array_at(self.container(), "/env", "container") {
            let name = entry["name"].as_str().expect("env name").to_owned();
            let value = if let Some(v) = entry.get("value") {
                expand(v.as_str().unwrap_or_default(), &env)
            } else {
                let reference = at(entry, "/valueFrom/secretKeyRef", &name);
                assert_eq!(reference["name"], "wxgate", "{name}: another Secret");
                let key = reference["key"].as_str().expect("key");
                let placeholder = text_at(secret, &format!("/stringData/{key}"), "Secret");
                match (fill, placeholder.is_empty()) {
                    (true, true) => secret_test_value(key).to_owned(),
                    _ => placeholder.to_owned(),
                }
            };
            env.insert(name, value);
        }
        env
    }

    /// The file a mount path maps to: `(volume, item key)` of the volume mounted above `path`.
    fn mounted_item(&self, path: &str) -> (&Value, String) {
        let mounts = array_at(self.container(), "/volumeMounts", "container");
        let volumes = array_at(
            self.deployment(),
            "/spec/template/spec/volumes",
            "Deployment",
        );
        let (mount, file) = mounts
            .iter()
            .find_map(|m| {
                let dir = m["mountPath"].as_str()?;
                let file = path.strip_prefix(dir)?.strip_prefix('/')?;
                Some((m, file.to_owned()))
            })
            .unwrap_or_else(|| panic!("nothing is mounted above {path}"));
        assert_eq!(mount["readOnly"], true, "{path} is mounted writable");
        assert!(
            mount.get("subPath").is_none(),
            "{path}: a subPath mount never sees ConfigMap or Secret updates, so no reload"
        );
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        let source = volume
            .get("configMap")
            .or_else(|| volume.get("secret"))
            .expect("a configMap or secret volume");
        let key = source
            .get("items")
            .and_then(Value::as_array)
            .and_then(|items| items.iter().find(|i| i["path"] == file.as_str()))
            .map(|i| i["key"].as_str().expect("item key").to_owned())
            .unwrap_or(file);
        (volume, key)
    }
}

/// Kubernetes' `$(NAME)` references to variables defined earlier in the list.
fn expand(value: &str, earlier: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (name, v) in earlier {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

fn secret_test_value(key: &str) -> &'static str {
    match key {
        "wechat-secret" => "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "session-secret" => TEST_SESSION_SECRET,
        "redis-password" => TEST_REDIS_PASSWORD,
        other => panic!("Secret key {other} has no test value; add one"),
    }
}

/// The ConfigMap's wxgate.toml written out with the key file standing in for the Secret's.
struct KubeConfig {
    _dir: tempfile::TempDir,
    file: PathBuf,
    env: BTreeMap<String, String>,
}

fn kube_config(kube: &Kube, fill: bool) -> KubeConfig {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("wxgate.toml");
    std::fs::write(&file, kube.config_map_text()).expect("write wxgate.toml");
    let mut env = kube.environment(fill);
    // The Secret's identity.pem, at a path of this machine instead of the pod's mount.
    let key = if fill {
        identity_key(dir.path())
    } else {
        let empty = dir.path().join("identity.pem");
        std::fs::write(&empty, "").expect("write empty key");
        empty
    };
    env.insert(
        "WXGATE_IDENTITY__KEY_FILE".into(),
        key.display().to_string(),
    );
    KubeConfig {
        _dir: dir,
        file,
        env,
    }
}

#[test]
fn kustomization_lists_every_manifest_in_the_directory() {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = array_at(&kustomization, "/resources", "kustomization")
        .iter()
        .map(|r| r.as_str().expect("file").to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let images = array_at(&kustomization, "/images", "kustomization");
    let kube = Kube::load();
    let image = text_at(kube.container(), "/image", "container");
    assert!(
        images.iter().any(|i| i["name"] == image),
        "kustomization does not set the image {image}"
    );
}

#[test]
fn kubernetes_configmap_loads_with_the_secret_and_shares_sessions_in_redis() {
    let kube = Kube::load();
    let deployment = kube.deployment();
    let replicas = at(deployment, "/spec/replicas", "Deployment")
        .as_u64()
        .expect("replicas");
    assert!(
        replicas >= 2,
        "{replicas} replica: no gateway during a rollout"
    );

    let config = kube_config(&kube, true);
    let effective = effective_config(&config.file, &config.env, "ConfigMap wxgate.toml");
    assert_eq!(
        effective.session.store,
        wxgate::config::StoreKind::Redis,
        "replicas must share sessions"
    );

    // The Redis URL names the Redis Service, its port and the password Redis requires.
    let redis_url = url::Url::parse(&config.env["WXGATE_SESSION__REDIS_URL"]).expect("url");
    let service = kube.get("Service", redis_url.host_str().unwrap_or_default());
    let service_port = array_at(service, "/spec/ports", "redis Service")[0]["port"].as_u64();
    assert_eq!(
        redis_url.port_or_known_default().map(u64::from),
        service_port
    );
    assert_eq!(redis_url.password(), Some(TEST_REDIS_PASSWORD));
    let redis = kube.get("StatefulSet", "wxgate-redis");
    let redis_args = at(redis, "/spec/template/spec/containers/0/args", "redis").to_string();
    assert!(redis_args.contains("--requirepass") && redis_args.contains("$(REDIS_PASSWORD)"));
    assert!(
        selects(
            at(service, "/spec/selector", "redis Service"),
            at(redis, "/spec/template/metadata/labels", "redis")
        ),
        "the Redis Service selects no Redis pod"
    );

    // The configuration is mounted where the command reads it, the key where the file says.
    let args: Vec<String> =
        serde_json::from_value(at(kube.container(), "/args", "container").clone()).expect("args");
    let config_path = config_argument(&args, "Deployment args");
    let (volume, key) = kube.mounted_item(&config_path);
    assert_eq!(volume["configMap"]["name"], "wxgate");
    assert_eq!(key, "wxgate.toml");
    let file_config: Config = toml::from_str(kube.config_map_text()).expect("ConfigMap toml");
    let key_file = file_config.identity.key_file.expect("identity.key_file");
    let (volume, key) = kube.mounted_item(&key_file.display().to_string());
    assert_eq!(volume["secret"]["secretName"], "wxgate");
    assert_eq!(key, "identity.pem");
    assert!(
        at(kube.get("Secret", "wxgate"), "/stringData", "Secret")
            .get(&key)
            .is_some()
    );
}

#[test]
fn kubernetes_secret_placeholders_keep_the_gateway_from_starting() {
    // Applied as shipped, the pods must refuse to start and name what is missing, rather
    // than run with a guessable secret.
    let kube = Kube::load();
    let config = kube_config(&kube, false);
    let checked = wxgate_check(&config.file, &config.env);
    assert!(
        !checked.ok,
        "the unfilled Secret was accepted:\n{}",
        checked.stdout
    );
    for key in ["wechat.secret", "session.secret", "identity.key_file"] {
        assert!(
            checked.stderr.contains(&format!("{key}:")),
            "{key} not named in:\n{}",
            checked.stderr
        );
    }
}

#[test]
fn kubernetes_ports_and_probes_are_the_gateways() {
    let kube = Kube::load();
    let (http, admin) = default_ports();
    let file_config: Config = toml::from_str(kube.config_map_text()).expect("ConfigMap toml");
    assert_eq!(file_config.server.listen.port(), http);
    assert_eq!(file_config.admin.listen.port(), admin);
    assert!(
        file_config.admin.listen.ip().is_unspecified(),
        "admin.listen on loopback: the kubelet's probes could not reach it"
    );
    let container = kube.container();
    let ports: BTreeSet<u16> = array_at(container, "/ports", "container")
        .iter()
        .map(|p| kube.container_port(&p["containerPort"]))
        .collect();
    assert_eq!(ports, BTreeSet::from([http, admin]));

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(container, &format!("/{probe}/httpGet"), probe);
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(kube.container_port(&get["port"]), admin, "{probe} port");
    }

    // The Service sends traffic to the main listener only; the admin port stays private.
    let service = kube.get("Service", "wxgate");
    let targets: Vec<u16> = array_at(service, "/spec/ports", "Service")
        .iter()
        .map(|p| kube.container_port(&p["targetPort"]))
        .collect();
    assert_eq!(targets, [http]);
    assert!(
        selects(at(service, "/spec/selector", "Service"), kube.pod_labels()),
        "the Service selects no gateway pod"
    );
}

#[test]
fn kubernetes_gives_in_flight_requests_their_drain_time() {
    let kube = Kube::load();
    let spec = at(kube.deployment(), "/spec/template/spec", "Deployment");
    let grace = Duration::from_secs(
        at(spec, "/terminationGracePeriodSeconds", "pod")
            .as_u64()
            .expect("seconds"),
    );
    let pre_stop = at(kube.container(), "/lifecycle/preStop", "container");
    let sleep = match pre_stop.get("sleep") {
        Some(s) => Duration::from_secs(s["seconds"].as_u64().expect("seconds")),
        None => {
            let command = array_at(pre_stop, "/exec/command", "preStop");
            assert!(command[0].as_str().unwrap_or_default().ends_with("sleep"));
            duration(command[1].as_str().expect("sleep time"), "preStop")
        }
    };
    assert!(
        !sleep.is_zero(),
        "no preStop sleep: endpoints drop after the drain starts"
    );
    let config = kube_config(&kube, true);
    let drain = effective_config(&config.file, &config.env, "ConfigMap")
        .server
        .drain_timeout;
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace:?} ≤ preStop {sleep:?} + drain_timeout {drain:?}"
    );

    // Evictions keep one gateway serving; the budget selects the gateway's pods.
    let pdb = kube.get("PodDisruptionBudget", "wxgate");
    assert_eq!(at(pdb, "/spec/minAvailable", "PDB"), 1);
    assert!(
        selects(
            at(pdb, "/spec/selector/matchLabels", "PDB"),
            kube.pod_labels()
        ),
        "the budget selects no gateway pod"
    );
}

#[test]
fn kubernetes_runs_the_gateway_unprivileged_and_bounded() {
    let kube = Kube::load();
    let pod = at(
        kube.deployment(),
        "/spec/template/spec/securityContext",
        "pod",
    );
    assert_eq!(pod["runAsNonRoot"], true);
    assert_eq!(
        pod["runAsUser"].as_u64(),
        Some(image_uid()),
        "not the image's user"
    );
    let container = at(kube.container(), "/securityContext", "container");
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(
        container["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    let resources = at(kube.container(), "/resources", "container");
    for part in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
        at(resources, part, "resources");
    }
    // The Secret's values reach the container only through these references: nothing secret
    // is written in the Deployment itself.
    for entry in array_at(kube.container(), "/env", "container") {
        let name = entry["name"].as_str().unwrap_or_default();
        if name.ends_with("SECRET") || name.ends_with("PASSWORD") {
            assert!(entry.get("value").is_none(), "{name} written in clear");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Environment variable names, everywhere

#[test]
fn every_wxgate_variable_in_the_deployment_files_is_a_configuration_key() {
    let keys = config_keys();
    let mut names: Vec<(String, &str)> = Vec::new();
    let kube = Kube::load();
    for name in kube.environment(true).into_keys() {
        names.push((name, "deploy/kubernetes/deployment.yaml"));
    }
    let compose = compose();
    for (service, definition) in at(&compose, "/services", "compose")
        .as_object()
        .expect("services")
    {
        for name in compose_environment(definition, service).into_keys() {
            names.push((name, "deploy/docker-compose.yml"));
        }
    }
    for file in ["deploy/.env.example", "deploy/systemd/wxgate.env.example"] {
        for line in read(file).lines() {
            let line = line.trim().trim_start_matches('#');
            if let Some((name, _)) = line.split_once('=') {
                if !name.contains(' ') {
                    names.push((name.to_owned(), file));
                }
            }
        }
    }
    for line in read("deploy/systemd/wxgate.service").lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let name = assignment.split('=').next().unwrap_or_default();
            names.push((name.to_owned(), "deploy/systemd/wxgate.service"));
        }
    }
    let wxgate: Vec<_> = names
        .iter()
        .filter(|(n, _)| n.starts_with("WXGATE_"))
        .collect();
    assert!(wxgate.len() >= 8, "too few variables found: {wxgate:?}");
    for (name, file) in wxgate {
        let key = config_key_of(name).unwrap_or_default();
        assert!(
            keys.contains(&key),
            "{file}: {name} would set `{key}`, which is no configuration key"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `[Section] Key=Value` lines of a unit file, in order (a key may repeat).
fn unit_directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn service_values(directives: &[(String, String, String)], key: &str) -> Vec<String> {
    directives
        .iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

#[test]
fn systemd_unit_is_hardened_reloads_on_hup_and_outwaits_the_drain() {
    let directives = unit_directives(&read("deploy/systemd/wxgate.service"));
    let one = |key: &str| {
        let values = service_values(&directives, key);
        assert_eq!(
            values.len(),
            1,
            "[Service] {key}: expected once, found {values:?}"
        );
        values[0].clone()
    };
    for (key, expected) in [
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictRealtime", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("StateDirectory", "wxgate"),
        ("DynamicUser", "yes"),
    ] {
        assert_eq!(one(key), expected, "[Service] {key}");
    }
    assert!(one("EnvironmentFile").starts_with("/etc/wxgate/"));
    let families = one("RestrictAddressFamilies");
    assert!(families.contains("AF_INET") && !families.contains("AF_PACKET"));
    assert!(
        service_values(&directives, "SystemCallFilter").contains(&"@system-service".to_owned())
    );
    // No capability at all while the listeners are on unprivileged ports.
    let (http, admin) = default_ports();
    if http >= 1024 && admin >= 1024 {
        assert_eq!(one("CapabilityBoundingSet"), "");
        assert_eq!(one("AmbientCapabilities"), "");
    }
    let exec = one("ExecStart");
    assert!(exec.contains("wxgate run --config /etc/wxgate/"), "{exec}");
    let stop = duration(&one("TimeoutStopSec"), "TimeoutStopSec");
    for drain in drain_timeouts() {
        assert!(
            stop > drain,
            "TimeoutStopSec {stop:?} ≤ drain_timeout {drain:?}"
        );
    }
}

#[test]
fn systemd_analyze_accepts_the_unit_and_rates_it_well_hardened() {
    let analyze = "systemd-analyze";
    if !tool(analyze, "systemd") {
        return;
    }
    // A copy whose ExecStart names the binary built here, so `verify` finds it.
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("wxgate.service");
    let text = read("deploy/systemd/wxgate.service").replace("/usr/local/bin/wxgate", BIN);
    std::fs::write(&unit, text).expect("write unit");

    let verify = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify:\n{complaints}"
    );
    // Exposure is scored 0.0 (locked down) to 10.0; the threshold is in tenths.
    let security = Command::new(analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    assert!(
        security.status.success(),
        "exposure above 2.0:\n{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics and the Grafana dashboard

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family as PromQL names it (counters with `_total`, histograms by their base name).
#[derive(Debug, Clone)]
struct Family {
    kind: Kind,
    /// `None` when unknown (a scraped family without a series yet).
    labels: Option<BTreeSet<String>>,
}

type Families = BTreeMap<String, Family>;

/// The metrics of the operations issue, names and labels exactly: the contract between the
/// code, the dashboard and whoever writes alerts on them.
const METRICS: &[(&str, Kind, &[&str])] = &[
    (
        "wxgate_http_requests_total",
        Kind::Counter,
        &["route", "status"],
    ),
    (
        "wxgate_http_request_duration_seconds",
        Kind::Histogram,
        &["route"],
    ),
    ("wxgate_open_connections", Kind::Gauge, &[]),
    ("wxgate_parked_connections", Kind::Gauge, &[]),
    ("wxgate_logins_started_total", Kind::Counter, &["scope"]),
    ("wxgate_logins_completed_total", Kind::Counter, &["scope"]),
    ("wxgate_logins_failed_total", Kind::Counter, &["reason"]),
    (
        "wxgate_wechat_calls_total",
        Kind::Counter,
        &["endpoint", "errcode"],
    ),
    (
        "wxgate_wechat_call_duration_seconds",
        Kind::Histogram,
        &["endpoint"],
    ),
    ("wxgate_profile_refreshes_total", Kind::Counter, &["result"]),
    ("wxgate_sessions_active", Kind::Gauge, &[]),
    ("wxgate_session_store_errors_total", Kind::Counter, &["op"]),
    (
        "wxgate_session_store_duration_seconds",
        Kind::Histogram,
        &["op"],
    ),
    ("wxgate_rate_limited_total", Kind::Counter, &["what"]),
    ("wxgate_callback_repeats_total", Kind::Counter, &["result"]),
    ("wxgate_config_reloads_total", Kind::Counter, &["result"]),
    (
        "wxgate_jssdk_fetches_total",
        Kind::Counter,
        &["what", "result"],
    ),
    ("wxgate_jssdk_signatures_total", Kind::Counter, &["result"]),
];

fn listed_families() -> Families {
    METRICS
        .iter()
        .map(|(name, kind, labels)| {
            let labels = labels.iter().map(|l| (*l).to_owned()).collect();
            (
                (*name).to_owned(),
                Family {
                    kind: *kind,
                    labels: Some(labels),
                },
            )
        })
        .collect()
}

/// What the dashboard is checked against: the real `/metrics` of a running gateway (every
/// family is exported from the start, at zero). `listed_families()` would check it against
/// the list instead.
fn exported_families() -> Families {
    scraped_families()
}

/// The families a gateway started in-process serves on its admin listener's `/metrics`.
fn scraped_families() -> Families {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let text = runtime.block_on(async {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.admin.listen = "127.0.0.1:0".parse().expect("addr");
        config.session.store = wxgate::config::StoreKind::Memory;
        config.log.access_log = false;
        config.routes.push(wxgate::config::RouteConfig {
            host: None,
            path: "/".into(),
            upstream: url::Url::parse("http://127.0.0.1:9").expect("url"),
            scope: wxgate::config::Scope::Public,
            non_wechat: wxgate::config::NonWeChat::Qrcode,
            allow_snapshot: true,
            timeout: None,
            app: None,
            access: None,
        });
        let gateway = wxgate::server::start(&config)
            .await
            .expect("gateway starts");
        let body = http_get(gateway.admin_addr, "/metrics").await;
        gateway.shutdown().await;
        body
    });
    families_of(&text)
}

/// One GET on its own connection, closed by the server after the answer; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Families of a Prometheus/OpenMetrics text exposition, named as PromQL sees them.
fn families_of(exposition: &str) -> Families {
    let mut families = Families::new();
    let mut base_of: BTreeMap<String, String> = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let (kind, promql) = match kind {
            "counter" if name.ends_with("_total") => (Kind::Counter, name.to_owned()),
            "counter" => (Kind::Counter, format!("{name}_total")),
            "gauge" => (Kind::Gauge, name.to_owned()),
            "histogram" => (Kind::Histogram, name.to_owned()),
            _ => continue,
        };
        base_of.insert(name.trim_end_matches("_total").to_owned(), promql.clone());
        families.insert(promql, Family { kind, labels: None });
    }
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let (series, labels) = sample_labels(line);
        let Some(promql) = base_of.iter().rev().find_map(|(base, promql)| {
            let suffix = series.strip_prefix(base.as_str())?;
            ["", "_total", "_bucket", "_sum", "_count", "_created"]
                .contains(&suffix)
                .then_some(promql)
        }) else {
            continue;
        };
        if let Some(family) = families.get_mut(promql) {
            let known = family.labels.get_or_insert_with(BTreeSet::new);
            known.extend(labels.into_iter().filter(|l| l != "le"));
        }
    }
    families
}

/// The series name and label names of one sample line (`name{a="x",b="y\"z"} 1`).
fn sample_labels(line: &str) -> (&str, Vec<String>) {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..end];
    let mut labels = Vec::new();
    if line[end..].starts_with('{') {
        let mut chars = line[end + 1..].chars();
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '}' => break,
                '=' => {
                    labels.push(std::mem::take(&mut label));
                    chars.next(); // the opening quote
                    let mut escaped = false;
                    for v in chars.by_ref() {
                        match (escaped, v) {
                            (false, '\\') => escaped = true,
                            (false, '"') => break,
                            _ => escaped = false,
                        }
                    }
                }
                ',' | ' ' => {}
                c => label.push(c),
            }
        }
    }
    (name, labels)
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/wxgate-dashboard.json")).expect("dashboard JSON")
}

/// Panels, with the panels nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in array_at(dashboard, "/panels", "dashboard") {
        out.push(panel);
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            out.extend(nested);
        }
    }
    out
}

/// One PromQL query of the dashboard: a panel's target or a variable's query.
struct Query {
    place: String,
    expr: String,
    legend: String,
}

fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel.get("targets").and_then(Value::as_array);
        for target in targets.into_iter().flatten() {
            out.push(Query {
                place: format!("panel {title:?}"),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    for variable in array_at(dashboard, "/templating/list", "dashboard") {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .unwrap_or_default();
            out.push(Query {
                place: format!("variable {}", variable["name"]),
                expr: query.to_owned(),
                legend: String::new(),
            });
        }
    }
    out
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `wxgate_*` series names in an expression.
fn series_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wxgate_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name_char);
        let end = rest[at..]
            .find(|c| !is_name_char(c))
            .map_or(rest.len(), |e| at + e);
        if !preceded {
            out.push(rest[at..end].to_owned());
        }
        rest = &rest[end..];
    }
    out
}

/// Label names a PromQL expression refers to: matchers, `by (…)`, `without (…)`, and the
/// label of Grafana's `label_values(…, label)`.
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find('{') {
        let body = &rest[start + 1..];
        let end = body.find('}').unwrap_or(body.len());
        for matcher in split_matchers(&body[..end]) {
            let name = matcher.split(['=', '!']).next().unwrap_or_default().trim();
            if !name.is_empty() {
                labels.insert(name.to_owned());
            }
        }
        rest = &body[end..];
    }
    let mut lists = Vec::new();
    for keyword in ["by (", "without ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let body = &rest[at + keyword.len()..];
            let end = body.find(')').unwrap_or(body.len());
            lists.push(&body[..end]);
            rest = &body[end..];
        }
    }
    if let Some(args) = expr
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        lists.extend(args.rsplit_once(',').map(|(_, label)| label));
    }
    for list in lists {
        labels.extend(
            list.split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    labels
}

/// The labels a legend shows: `{{route}}`.
fn legend_labels(legend: &str) -> BTreeSet<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

/// `a="x", b=~"y,z"` → the matchers, commas inside quotes kept.
fn split_matchers(body: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in body.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c if !quoted => out.last_mut().expect("one").push(c),
            _ => {}
        }
    }
    out.into_iter().map(|m| m.trim().to_owned()).collect()
}

/// The family a series belongs to: itself, or a histogram's `_bucket`, `_sum`, `_count`.
fn family_of<'a>(series: &str, families: &'a Families) -> Option<(&'a str, &'a Family)> {
    if let Some((name, family)) = families.get_key_value(series) {
        return (family.kind != Kind::Histogram).then_some((name.as_str(), family));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        let (name, family) = families.get_key_value(base)?;
        (family.kind == Kind::Histogram).then_some((name.as_str(), family))
    })
}

#[test]
fn dashboard_queries_only_metrics_and_labels_the_gateway_exports() {
    let families = exported_families();
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    for query in queries(&dashboard) {
        let (place, expr) = (&query.place, &query.expr);
        let mut allowed: BTreeSet<String> = ["job", "instance"].map(String::from).into();
        let mut known = true;
        for series in series_in(expr) {
            let (name, family) = family_of(&series, &families).unwrap_or_else(|| {
                panic!("{place}: {series} is not a series the gateway exports: {expr}")
            });
            used.insert(name.to_owned());
            match &family.labels {
                Some(labels) => allowed.extend(labels.iter().cloned()),
                None => known = false,
            }
            if series.ends_with("_bucket") {
                allowed.insert("le".into());
            }
        }
        let mut referred = labels_in(expr);
        referred.extend(legend_labels(&query.legend));
        let unknown: Vec<_> = referred.difference(&allowed).collect();
        assert!(
            !known || unknown.is_empty(),
            "{place}: labels {unknown:?} are not on its metrics: {expr}"
        );
    }
    let missing: Vec<_> = families.keys().filter(|f| !used.contains(*f)).collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn dashboard_panels_use_the_ds_prometheus_data_source() {
    let dashboard = dashboard();
    let variables = array_at(&dashboard, "/templating/list", "dashboard");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no DS_PROMETHEUS data source variable"
    );
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].to_string()), "{title}: duplicate id");
        let grid = &panel["gridPos"];
        let right = grid["x"].as_u64().unwrap_or(99) + grid["w"].as_u64().unwrap_or(99);
        assert!(right <= 24, "{title}: wider than the dashboard");
        if panel["type"] == "row" {
            continue;
        }
        let targets = array_at(panel, "/targets", title);
        assert!(!targets.is_empty(), "{title}: no query");
        for source in std::iter::once(panel).chain(targets) {
            assert_eq!(
                source["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title}: another data source"
            );
        }
        assert!(
            !panel["description"].as_str().unwrap_or_default().is_empty(),
            "{title}: tell the operator what the panel shows"
        );
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let promtool = "promtool";
    if !tool(promtool, "prometheus") {
        return;
    }
    // Grafana's variables replaced by what they expand to, each query a recording rule.
    let rules: Vec<Value> = queries(&dashboard())
        .into_iter()
        .filter(|q| q.place.starts_with("panel"))
        .enumerate()
        .map(|(n, q)| {
            let expr = q
                .expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$route", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{n}"), "expr": expr })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, yaml_serde::to_string(&file).expect("yaml")).expect("write rules");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gateway_exports_exactly_the_listed_metrics() {
    // A metric renamed, relabelled, dropped or added in the code without the list (and so the
    // dashboard and the alerts built on these names) fails here.
    let listed = listed_families();
    let scraped = scraped_families();
    let names = |f: &Families| f.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(&scraped), names(&listed), "scraped vs METRICS");
    for (name, family) in &scraped {
        let entry = &listed[name];
        assert_eq!(entry.kind, family.kind, "{name}: kind");
        assert_eq!(
            family.labels, entry.labels,
            "{name}: labels (none known: the family has no series at start)"
        );
    }
}
