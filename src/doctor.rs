//! `wxgate doctor`: checks a live deployment from the gateway's own host, the way WeChat
//! and a visitor's phone will meet it, and prints a checklist with the fix for each failure.
//!
//! What it checks, in the order a first deployment fails: `server.public_url` is an https
//! origin without a port; its host resolves; it serves TLS with a certificate valid for that
//! host and not about to expire; the gateway answers there (its JWKS and its callback path,
//! the `redirect_uri` WeChat sends visitors back to); the `MP_verify_*.txt` file WeChat asks
//! for answers 200 with its token; this host's clock agrees with WeChat's `Date`; WeChat's
//! API host is reachable; and, only when asked (it spends quota), one `stable_token` call
//! proves appid, AppSecret and the IP whitelist together.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{self, Config};

/// `wxgate doctor`'s options.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// TOML configuration file of the deployment; `WXGATE_*` environment variables override it.
    #[arg(
        long,
        short,
        default_value = "config/wxgate.toml",
        env = "WXGATE_CONFIG"
    )]
    pub config: PathBuf,
    /// The domain verification file WeChat gave you (`MP_verify_xxx.txt`); default: the
    /// ones the routes name.
    #[arg(long = "verify-file", value_name = "MP_verify_xxx.txt")]
    pub verify_files: Vec<String>,
    /// Also call WeChat's `cgi-bin/stable_token` once per Official Account: proves appid,
    /// AppSecret and IP whitelist, and spends one call of the daily quota.
    #[arg(long)]
    pub call_wechat: bool,
    /// A PEM file of certificate authorities to trust besides the public ones (a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// A certificate that expires sooner than this fails.
    #[arg(long, default_value = "14", value_name = "DAYS")]
    pub min_cert_days: u64,
}

/// The clock may be this far from WeChat's before the check fails.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Time limit of each network step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of the checklist.
#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    Pass(String),
    Fail { found: String, fix: String },
    Skipped(String),
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            outcome: Outcome::Pass(detail.into()),
        }
    }

    fn fail(name: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            outcome: Outcome::Fail {
                found: found.into(),
                fix: fix.into(),
            },
        }
    }

    fn skipped(name: impl Into<String>, why: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            outcome: Outcome::Skipped(why.into()),
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass(detail) => write!(f, "[ok]   {}: {detail}", self.name),
            Outcome::Skipped(why) => write!(f, "[skip] {}: {why}", self.name),
            Outcome::Fail { found, fix } => {
                write!(f, "[FAIL] {}: {found}\n       fix: {fix}", self.name)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("--ca-file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("the HTTP client cannot be built: {0}")]
    Client(String),
}

/// Runs every check, printing each line as it is decided; the checks, for the exit code.
pub async fn run(args: &DoctorArgs) -> Result<Vec<Check>, DoctorError> {
    let config = config::load(&args.config)?;
    let roots = Arc::new(trust_roots(args.ca_file.as_deref())?);
    let mut checks = Vec::new();
    let mut report = |check: Check| {
        println!("{check}");
        checks.push(check);
    };
    let Some(origin) = public_origin(&config, &mut report) else {
        return Ok(checks);
    };
    let site = Site::new(&origin, roots.clone())?;
    if let Some(addrs) = resolve(&origin, &mut report).await {
        if tls(&origin, &addrs, roots, args.min_cert_days, &mut report).await {
            gateway_answers(&config, &site, &mut report).await;
        }
        verify_files(&config, &args.verify_files, &site, &mut report).await;
    }
    wechat_reachable(&config, &mut report).await;
    if args.call_wechat {
        for (label, wechat) in accounts(&config) {
            stable_token(&label, &wechat, &mut report).await;
        }
    } else {
        report(Check::skipped(
            "appid, AppSecret, IP whitelist",
            "not called (each call spends WeChat API quota); run with --call-wechat to prove them",
        ));
    }
    Ok(checks)
}

/// The public origin parts the other checks need.
struct Origin {
    url: url::Url,
    host: String,
    port: u16,
}

fn public_origin(config: &Config, report: &mut impl FnMut(Check)) -> Option<Origin> {
    const NAME: &str = "server.public_url";
    let Some(url) = config.server.public_url.clone() else {
        report(Check::fail(
            NAME,
            "not set",
            "set server.public_url to the https:// origin visitors use, e.g. https://m.example.com",
        ));
        return None;
    };
    let Some(host) = url.host_str().map(str::to_owned) else {
        report(Check::fail(
            NAME,
            format!("{url} has no host"),
            "write it as https://<your domain>",
        ));
        return None;
    };
    if url.scheme() != "https" {
        report(Check::fail(
            NAME,
            format!("{url} is not https"),
            "WeChat's authorization pages and phones expect https: put a certificate on the \
             domain (server.tls, or a TLS proxy in front) and write public_url as https://",
        ));
        return None;
    }
    let loopback = is_loopback(&host);
    match url.port() {
        Some(port) if !loopback => {
            report(Check::fail(
                NAME,
                format!("{url} has a port ({port})"),
                "WeChat's 网页授权域名 is a bare domain: a redirect_uri with a port fails with \
                 10003 (redirect_uri 参数错误); serve the gateway on 443 and drop the port",
            ));
            return None;
        }
        _ => report(Check::pass(
            NAME,
            if loopback {
                format!("{url} (loopback: a port is accepted for local trials)")
            } else {
                format!("{url}: https, no port")
            },
        )),
    }
    let port = url.port_or_known_default().unwrap_or(443);
    Some(Origin { url, host, port })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn resolve(origin: &Origin, report: &mut impl FnMut(Check)) -> Option<Vec<SocketAddr>> {
    let name = format!("DNS of {}", origin.host);
    let host = origin.host.trim_start_matches('[').trim_end_matches(']');
    let looked_up =
        tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, origin.port))).await;
    let addrs: Vec<SocketAddr> = match looked_up {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            report(Check::fail(
                name,
                format!("does not resolve: {e}"),
                format!(
                    "add an A (or AAAA) record for {} pointing at this server",
                    origin.host
                ),
            ));
            return None;
        }
        Err(_) => {
            report(Check::fail(
                name,
                "the lookup timed out",
                "check this host's resolver (/etc/resolv.conf) and the domain's DNS servers",
            ));
            return None;
        }
    };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    report(Check::pass(name, shown.join(", ")));
    Some(addrs)
}

/// Public roots (Mozilla's list, what phones trust) plus the `--ca-file` ones.
fn trust_roots(ca_file: Option<&Path>) -> Result<RootCertStore, DoctorError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let fail = |reason: String| DoctorError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let mut found = 0;
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: CertificateDer<'static> = cert.map_err(|e| fail(e.to_string()))?;
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(fail("holds no PEM certificate".to_owned()));
        }
    }
    Ok(roots)
}

/// Records the chain the server presents and lets the handshake finish, so that the
/// verdict (and the expiry date) can be worked out and explained afterwards.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.chain.lock().unwrap_or_else(PoisonError::into_inner) = Some(chain);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn verifier(roots: Arc<RootCertStore>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| e.to_string())
}

/// The TLS check: handshake with the first address, then the chain judged for this host
/// now and `min_days` ahead. True when the certificate is usable now.
async fn tls(
    origin: &Origin,
    addrs: &[SocketAddr],
    roots: Arc<RootCertStore>,
    min_days: u64,
    report: &mut impl FnMut(Check),
) -> bool {
    let name = format!("TLS certificate of {}", origin.host);
    let inner = match verifier(roots) {
        Ok(inner) => inner,
        Err(e) => {
            report(Check::fail(
                name,
                e,
                "pass a --ca-file with at least one CA",
            ));
            return false;
        }
    };
    let recorder = Arc::new(Recorder {
        inner: inner.clone(),
        chain: Mutex::new(None),
    });
    let server_name = match ServerName::try_from(
        origin
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    ) {
        Ok(n) => n,
        Err(e) => {
            report(Check::fail(
                name,
                e.to_string(),
                "write public_url with a valid host",
            ));
            return false;
        }
    };
    let handshake = handshake(addrs, recorder.clone(), server_name.clone()).await;
    if let Err(found) = handshake {
        report(Check::fail(
            name,
            found,
            format!(
                "make {}:{} serve TLS: server.tls in the gateway, or the TLS proxy in front of it",
                origin.host, origin.port
            ),
        ));
        return false;
    }
    let chain = recorder
        .chain
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    let Some((end_entity, intermediates)) = chain.split_first() else {
        report(Check::fail(
            name,
            "no certificate was presented",
            "configure a certificate",
        ));
        return false;
    };
    let valid_at = |at: SystemTime| {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        inner.verify_server_cert(
            end_entity,
            intermediates,
            &server_name,
            &[],
            UnixTime::since_unix_epoch(since),
        )
    };
    let now = SystemTime::now();
    if let Err(e) = valid_at(now) {
        report(Check::fail(
            name,
            certificate_problem(&e, &origin.host),
            certificate_fix(&e),
        ));
        return false;
    }
    let expiry = last_valid_moment(now, |t| valid_at(t).is_ok());
    let left = expiry.duration_since(now).unwrap_or_default();
    let days = left.as_secs() / 86_400;
    let date = httpdate::fmt_http_date(expiry);
    if left < Duration::from_secs(min_days * 86_400) {
        report(Check::fail(
            name,
            format!(
                "valid for {} now, but it expires in {days} days ({date})",
                origin.host
            ),
            "renew it now (e.g. `certbot renew`), then reload the gateway (SIGHUP) or the proxy \
             serving it; automate the renewal",
        ));
        return true;
    }
    report(Check::pass(
        name,
        format!("valid for {}, expires in {days} days ({date})", origin.host),
    ));
    true
}

async fn handshake(
    addrs: &[SocketAddr],
    recorder: Arc<Recorder>,
    server_name: ServerName<'static>,
) -> Result<(), String> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recorder)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Some(addr) = addrs.first() else {
        return Err("no address to connect to".to_owned());
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("the TLS handshake with {addr} failed: {e}"))?;
        Ok(())
    };
    tokio::time::timeout(STEP_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{addr} did not complete a TLS handshake in time")))
}

/// The last moment at which `valid` holds, given it holds at `from`: validity of a chain is
/// one interval, so a binary search over the next 30 years finds its end to the second.
fn last_valid_moment(from: SystemTime, valid: impl Fn(SystemTime) -> bool) -> SystemTime {
    let (mut good, mut bad) = (0u64, 30 * 366 * 86_400u64);
    if valid(from + Duration::from_secs(bad)) {
        return from + Duration::from_secs(bad);
    }
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if valid(from + Duration::from_secs(mid)) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    from + Duration::from_secs(good)
}

fn certificate_problem(e: &rustls::Error, host: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the certificate has expired".to_owned()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            format!("the certificate is not valid for {host}")
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the certificate is not signed by a public CA (self-signed, or the chain lacks its \
             intermediate)"
                .to_owned()
        }
        other => format!("the certificate is refused: {other}"),
    }
}

fn certificate_fix(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "get a certificate whose names include the public_url host (certbot -d <host>)"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "serve the full chain (fullchain.pem, not cert.pem) from a public CA; phones refuse \
             anything else"
                .to_owned()
        }
        _ => "renew the certificate (e.g. `certbot renew`) and reload the gateway or its proxy"
            .to_owned(),
    }
}

/// HTTP to the public origin, trusting what the TLS check trusts.
struct Site {
    base: url::Url,
    client: reqwest::Client,
}

impl Site {
    fn new(origin: &Origin, roots: Arc<RootCertStore>) -> Result<Self, DoctorError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| DoctorError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(STEP_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| DoctorError::Client(e.to_string()))?;
        Ok(Site {
            base: origin.url.clone(),
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }
}

/// The gateway answers at the public origin: its JWKS (the same keys as this configuration:
/// this gateway, not another) and each callback path WeChat returns visitors to.
async fn gateway_answers(config: &Config, site: &Site, report: &mut impl FnMut(Check)) {
    let name = "the gateway behind public_url";
    let jwks = site.url("/_wxgate/jwks.json");
    let ours = {
        let (current, previous) = config.identity.key_sources();
        crate::identity::KeySet::load(&current, &previous)
            .ok()
            .map(|keys| keys.jwks().clone())
    };
    match site.client.get(&jwks).send().await {
        Ok(r) if r.status() == 200 => {
            let body = r.bytes().await.unwrap_or_default();
            let same = ours.as_ref().is_some_and(|ours| json_eq(ours, &body));
            if same {
                report(Check::pass(
                    name,
                    format!("{jwks} publishes this configuration's keys"),
                ));
            } else {
                report(Check::fail(
                    name,
                    format!("{jwks} publishes other keys than this configuration's"),
                    "public_url reaches another gateway (or an old configuration): point the \
                     domain (DNS, the proxy in front) at this one, or reload it",
                ));
            }
        }
        Ok(r) => report(Check::fail(
            name,
            format!("{jwks} answered {}", r.status()),
            "forward /_wxgate/ to the gateway in the proxy in front of it",
        )),
        Err(e) => report(Check::fail(
            name,
            format!("{jwks}: {}", error_chain(&e)),
            "make public_url reach the gateway",
        )),
    }
    for (label, path) in callback_paths(config) {
        callback(site, &label, &path, report).await;
    }
}

fn json_eq(a: &[u8], b: &[u8]) -> bool {
    let parse = |s: &[u8]| serde_json::from_slice::<serde_json::Value>(s).ok();
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}

fn callback_paths(config: &Config) -> Vec<(String, String)> {
    let mut paths = Vec::new();
    if config.default_app_needed() {
        paths.push(("[wechat]".to_owned(), "/_wxgate/callback".to_owned()));
    }
    for app in &config.apps {
        paths.push((
            format!("apps \"{}\"", app.name),
            format!("/_wxgate/callback/{}", app.name),
        ));
    }
    paths
}

/// The callback answers a POST with 405 and `Allow: GET, HEAD` before anything else (no
/// rate limit spent, no login disturbed): that answer is the gateway's own.
async fn callback(site: &Site, label: &str, path: &str, report: &mut impl FnMut(Check)) {
    let name = format!("callback of {label}");
    let url = site.url(path);
    match site.client.post(&url).send().await {
        Ok(r)
            if r.status() == 405 && r.headers().get("allow").is_some_and(|v| v == "GET, HEAD") =>
        {
            report(Check::pass(name, format!("{url} reaches the gateway")));
        }
        Ok(r) => report(Check::fail(
            name,
            format!("{url} answered {} and not as the gateway does", r.status()),
            "WeChat sends every visitor back to this redirect_uri: forward /_wxgate/ (the \
             whole prefix) to the gateway in the proxy in front of it",
        )),
        Err(e) => report(Check::fail(
            name,
            format!("{url}: {}", error_chain(&e)),
            "make public_url reach the gateway",
        )),
    }
}

/// `MP_verify_<token>.txt` files: given on the command line, or the routes that serve one.
async fn verify_files(
    config: &Config,
    given: &[String],
    site: &Site,
    report: &mut impl FnMut(Check),
) {
    let mut files: Vec<String> = given
        .iter()
        .map(|f| f.trim_start_matches('/').to_owned())
        .collect();
    if files.is_empty() {
        files = config
            .routes
            .iter()
            .filter_map(|r| r.path.strip_prefix('/'))
            .filter(|p| verify_token(p).is_some())
            .map(str::to_owned)
            .collect();
    }
    if files.is_empty() {
        report(Check::skipped(
            "MP_verify file",
            "no --verify-file given and no route serves /MP_verify_*.txt; WeChat asks for it \
             when you set 网页授权域名 (公众号 → 设置与开发 → 公众号设置 → 功能设置)",
        ));
        return;
    }
    for file in files {
        let name = format!("domain verification {file}");
        let Some(token) = verify_token(&file) else {
            report(Check::fail(
                name,
                "is not an MP_verify_<token>.txt name",
                "give the file name WeChat offers for download, like MP_verify_AbC123.txt",
            ));
            continue;
        };
        let url = site.url(&format!("/{file}"));
        let fix = format!(
            "serve the file WeChat gave you at the root of the domain: a public route \
             path = \"/{file}\" to an upstream that has it (its content is {token})"
        );
        match site.client.get(&url).send().await {
            Ok(r) if r.status() == 200 => {
                let body = r.text().await.unwrap_or_default();
                if body.trim() == token {
                    report(Check::pass(
                        name,
                        format!("{url} answers 200 with its token"),
                    ));
                } else {
                    report(Check::fail(
                        name,
                        format!("{url} answers 200 but not with the file's content"),
                        fix,
                    ));
                }
            }
            Ok(r) => report(Check::fail(
                name,
                format!("{url} answered {}", r.status()),
                fix,
            )),
            Err(e) => report(Check::fail(
                name,
                format!("{url}: {}", error_chain(&e)),
                fix,
            )),
        }
    }
}

/// `MP_verify_<token>.txt` → `<token>`.
fn verify_token(file: &str) -> Option<&str> {
    let token = file.strip_prefix("MP_verify_")?.strip_suffix(".txt")?;
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(token)
}

/// WeChat's API host answers (any HTTP answer will do), and its `Date` agrees with ours.
async fn wechat_reachable(config: &Config, report: &mut impl FnMut(Check)) {
    let mut bases: Vec<url::Url> = vec![config.wechat.api_base.clone()];
    for app in &config.apps {
        if let Some(base) = &app.api_base {
            if !bases.contains(base) {
                bases.push(base.clone());
            }
        }
    }
    let client = match reqwest::Client::builder().timeout(STEP_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            report(Check::fail(
                "wechat.api_base",
                e.to_string(),
                "see the error",
            ));
            return;
        }
    };
    let mut clock_checked = false;
    for base in bases {
        let name = format!("WeChat API {}", base.as_str().trim_end_matches('/'));
        let sent = SystemTime::now();
        match client.get(base.as_str()).send().await {
            Ok(r) => {
                let received = SystemTime::now();
                report(Check::pass(
                    &name,
                    format!("reachable (HTTP {})", r.status().as_u16()),
                ));
                if !clock_checked {
                    clock_checked = true;
                    clock(r.headers(), sent, received, report);
                }
            }
            Err(e) => report(Check::fail(
                name,
                format!("unreachable: {}", error_chain(&e)),
                "allow this host outbound HTTPS to api.weixin.qq.com (firewall, security group, \
                 HTTPS_PROXY); every login calls it",
            )),
        }
    }
    if !clock_checked {
        report(Check::skipped("clock", "WeChat's API host did not answer"));
    }
}

fn clock(
    headers: &http::HeaderMap,
    sent: SystemTime,
    received: SystemTime,
    report: &mut impl FnMut(Check),
) {
    let name = "clock";
    let Some(theirs) = headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        report(Check::skipped(name, "WeChat's answer carried no Date"));
        return;
    };
    // Date has whole seconds, stamped while the request was in flight.
    let mid = sent + received.duration_since(sent).unwrap_or_default() / 2;
    let (ahead, skew) = match mid.duration_since(theirs) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let secs = skew.as_secs();
    if skew > MAX_CLOCK_SKEW {
        report(Check::fail(
            name,
            format!(
                "this host's clock is {secs} s {} WeChat's",
                if ahead { "ahead of" } else { "behind" }
            ),
            "turn on time synchronisation (`timedatectl set-ntp true`, chrony or systemd-timesyncd)",
        ));
    } else {
        report(Check::pass(
            name,
            format!("within {secs} s of WeChat's Date"),
        ));
    }
}

/// Each Official Account the configuration logs visitors in with.
fn accounts(config: &Config) -> Vec<(String, config::WeChatConfig)> {
    let mut out = Vec::new();
    if config.default_app_needed() {
        out.push(("[wechat]".to_owned(), config.wechat.clone()));
    }
    for app in &config.apps {
        if let Some(c) = config.for_app(&app.name) {
            out.push((format!("apps \"{}\"", app.name), c.wechat));
        }
    }
    out
}

/// One `POST cgi-bin/stable_token`: the answer names what is wrong (appid, AppSecret, IP).
async fn stable_token(label: &str, wechat: &config::WeChatConfig, report: &mut impl FnMut(Check)) {
    let name = format!("appid, AppSecret, IP whitelist of {label}");
    let url = format!(
        "{}/cgi-bin/stable_token",
        wechat.api_base.as_str().trim_end_matches('/')
    );
    let body = serde_json::json!({
        "grant_type": "client_credential",
        "appid": wechat.appid,
        "secret": wechat.secret.expose(),
        "force_refresh": false,
    });
    let client = match reqwest::Client::builder().timeout(STEP_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            report(Check::fail(name, e.to_string(), "see the error"));
            return;
        }
    };
    let answer = match client.post(&url).json(&body).send().await {
        Ok(r) => r.bytes().await.unwrap_or_default(),
        Err(e) => {
            report(Check::fail(
                name,
                format!("{url}: {}", error_chain(&e)),
                "allow outbound HTTPS to api.weixin.qq.com",
            ));
            return;
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    // The access token itself is never shown: only whether one came back.
    if json
        .get("access_token")
        .and_then(|t| t.as_str())
        .is_some_and(|t| !t.is_empty())
    {
        report(Check::pass(
            name,
            format!("WeChat issued a token for {}", wechat.appid),
        ));
        return;
    }
    let errcode = json
        .get("errcode")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(-1);
    let errmsg = json
        .get("errmsg")
        .and_then(|m| m.as_str())
        .unwrap_or("no errmsg")
        .to_owned();
    let (found, fix) = explain_errcode(errcode, &errmsg, label);
    report(Check::fail(name, found, fix));
}

fn explain_errcode(errcode: i64, errmsg: &str, label: &str) -> (String, String) {
    let found = format!("WeChat answered errcode {errcode} ({errmsg})");
    let secret_var = if label == "[wechat]" {
        "WXGATE_WECHAT__SECRET".to_owned()
    } else {
        "WXGATE_APPS__<index>__SECRET".to_owned()
    };
    let fix = match errcode {
        40013 | 41002 => "the appid is not an Official Account's AppID: copy it from 公众号 → 设置与\
                          开发 → 基本配置 (开发者ID)"
            .to_owned(),
        40125 | 41004 | 40001 => format!(
            "the AppSecret is wrong: reset it in 基本配置 → 开发者密码(AppSecret), then set \
             {secret_var} and restart"
        ),
        40164 => "this host's IP is not in the IP whitelist: add the address WeChat names \
                  above in 基本配置 → IP白名单"
            .to_owned(),
        89503 | 89501 | 89506 | 89507 => "the IP whitelist asks an administrator to confirm \
                                          this IP: confirm it in the WeChat notification, or add it \
                                          to IP白名单"
            .to_owned(),
        45009 | 45011 => "the API quota is spent for now: try again later (or tomorrow)".to_owned(),
        48001 => "the account lacks this API (an unverified or personal account)".to_owned(),
        _ => "see WeChat's errcode list (全局返回码说明)".to_owned(),
    };
    (found, fix)
}

/// An error with its causes: reqwest's own message alone says only "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_file_names_give_their_token() {
        assert_eq!(verify_token("MP_verify_AbC123.txt"), Some("AbC123"));
        assert_eq!(verify_token("MP_verify_.txt"), None);
        assert_eq!(verify_token("MP_verify_a/b.txt"), None);
        assert_eq!(verify_token("verify_abc.txt"), None);
    }

    #[test]
    fn the_end_of_validity_is_found_to_the_second() {
        let from = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = from + Duration::from_secs(5 * 86_400 + 17);
        assert_eq!(last_valid_moment(from, |t| t <= end), end);
    }

    #[test]
    fn loopback_hosts_may_have_a_port() {
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["m.example.com", "10.0.0.1", "localhost.example"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
