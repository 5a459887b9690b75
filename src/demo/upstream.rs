//! The demo's upstream application: a real HTTP server behind the gateway that reads the
//! identity the way a production upstream should — verifying the JWT with the gateway's
//! published JWKS (or the shared HS256 secret) — and answers with the page of `page.rs`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::browser::WECHAT_MARKER;
use super::page::{self, Identity, Received};
use crate::identity::{
    Claims, IdentityError, KeySet, NICKNAME_HEADER, OPENID_HEADER, SCOPE_HEADER, UNIONID_HEADER,
};

/// The page loads the avatar, and runs two scripts only: WeChat's jweixin (the mock's
/// stand-in) and the gateway's `/_wxgate/jssdk.js`, for the share card.
fn content_security_policy(jweixin_origin: &str) -> String {
    format!(
        "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; \
script-src 'self' 'unsafe-inline' {jweixin_origin}; connect-src 'self' {jweixin_origin}; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// How the upstream checks the identity JWT.
pub enum Verifier {
    /// RS256/ES256/EdDSA: the public keys at the gateway's `/_wxgate/jwks.json`, fetched
    /// for every page view so the page shows the live check.
    Jwks {
        url: String,
        client: reqwest::Client,
    },
    /// HS256: the secret the gateway signs with, shared out of band.
    Shared(Box<KeySet>),
}

#[derive(Debug, thiserror::Error)]
enum VerifyError {
    #[error("the JWKS could not be fetched: {0}")]
    Fetch(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl Verifier {
    fn describe(&self) -> String {
        match self {
            Verifier::Jwks { url, .. } => url.clone(),
            Verifier::Shared(_) => "the shared HS256 secret".to_owned(),
        }
    }

    async fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Claims, VerifyError> {
        match self {
            Verifier::Shared(keys) => Ok(keys.verify(token, issuer, audience)?),
            Verifier::Jwks { url, client } => {
                let jwks = fetch(client, url).await.map_err(VerifyError::Fetch)?;
                Ok(crate::identity::verify_with_jwks(
                    token, &jwks, issuer, audience,
                )?)
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Bytes, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.bytes().await.map_err(|e| e.to_string())
}

/// The upstream application: what it needs to read the identity.
pub struct App {
    pub verifier: Verifier,
    pub identity_header: HeaderName,
    pub issuer: String,
    pub audience: String,
    /// Where WeChat's jweixin script is served (the mock, as res.wx.qq.com would).
    pub jweixin_origin: String,
}

impl App {
    async fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == "/favicon.ico" {
            return respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
        }
        let received = Received {
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            route: page::route_of(path),
            identity: self.identity(request.headers()).await,
            plain: plain_headers(request.headers()),
            headers: self.masked_headers(request.headers()),
            simulated_wechat: request.headers().get(USER_AGENT).is_some_and(|ua| {
                ua.as_bytes()
                    .ends_with(WECHAT_MARKER.trim_start().as_bytes())
            }),
            jweixin_origin: self.jweixin_origin.clone(),
        };
        let mut response = respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(page::render(&received)),
        );
        if let Ok(policy) = HeaderValue::from_str(&content_security_policy(&self.jweixin_origin)) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_SECURITY_POLICY, policy);
        }
        response
    }

    async fn identity(&self, headers: &HeaderMap) -> Identity {
        let Some(value) = headers.get(&self.identity_header) else {
            return Identity::Absent;
        };
        let against = self.verifier.describe();
        let Ok(token) = value.to_str() else {
            return Identity::Rejected {
                reason: "the header is not text".to_owned(),
                against,
            };
        };
        match self
            .verifier
            .verify(token, &self.issuer, &self.audience)
            .await
        {
            Ok(claims) => {
                let (algorithm, kid) = token_header(token);
                Identity::Verified {
                    claims: Box::new(claims),
                    algorithm,
                    kid,
                    against,
                    token_bytes: token.len(),
                }
            }
            Err(e) => Identity::Rejected {
                reason: e.to_string(),
                against,
            },
        }
    }

    /// Every header, in arrival order; the JWT and cookie values stay off the page because
    /// they are credentials (the session cookie reaches upstreams too).
    fn masked_headers(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, value)| {
                let shown = if name == self.identity_header {
                    format!("JWT, {} bytes (not shown · 不显示)", value.len())
                } else if name == COOKIE {
                    cookie_names(value)
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_owned(), shown)
            })
            .collect()
    }
}

/// `a=…; b=…`: which cookies arrived, never their values.
fn cookie_names(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes())
        .split(';')
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim()))
        .map(|name| format!("{name}=…"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn plain_headers(headers: &HeaderMap) -> Vec<(String, String, Option<String>)> {
    [OPENID_HEADER, UNIONID_HEADER, NICKNAME_HEADER, SCOPE_HEADER]
        .into_iter()
        .filter_map(|name| {
            let raw = String::from_utf8_lossy(headers.get(&name)?.as_bytes()).into_owned();
            let decoded = percent_encoding::percent_decode_str(&raw)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned());
            Some((name.as_str().to_owned(), raw, decoded))
        })
        .collect()
}

/// The JOSE header's `alg` and `kid`, for display only (the verifier has checked them).
fn token_header(token: &str) -> (String, String) {
    let header = token
        .split('.')
        .next()
        .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .unwrap_or_default();
    let field = |key: &str| header[key].as_str().unwrap_or("?").to_owned();
    (field("alg"), field("kid"))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response
}

/// Serves the app until `shutdown` turns true, then lets open connections finish briefly.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    crate::server::plain::serve(listener, stop, "demo upstream", move |request| {
        let app = Arc::clone(&app);
        async move { app.answer(&request).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_never_reach_the_page() {
        let value =
            HeaderValue::from_static("wxgate_session=SECRETSESSION; wxgate_demo_view=desktop");
        let shown = cookie_names(&value);
        assert_eq!(shown, "wxgate_session=…; wxgate_demo_view=…");
    }

    #[test]
    fn the_token_header_is_read_for_display() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        assert_eq!(
            token_header(&format!("{header}.e30.sig")),
            ("ES256".to_owned(), "k1".to_owned())
        );
        assert_eq!(token_header("garbage"), ("?".to_owned(), "?".to_owned()));
    }
}
