//! The hash hop: the one page a WeChat visitor sees on the way to the authorize page. A
//! page's `#fragment` (hash routes such as `#/lottery/42`) never reaches a server, and the
//! authorize URL's `#wechat_redirect` replaces it through every redirect that follows; so
//! before leaving, this page's script reports `location.hash` to the gateway, which keeps it
//! with the pending login and puts it back on the page after the callback. Without
//! JavaScript a `<noscript>` refresh (and a link) go straight to authorize: the login still
//! works, only the fragment is lost.

use std::sync::LazyLock;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::escape;
use crate::body::Body;

/// Reads the link's two targets from the page: a script that embeds nothing per request
/// can be allowed by its hash, with no nonce and no `unsafe-inline`.
const SCRIPT: &str = "(function(){var a=document.getElementById(\"wxgate-go\");\
location.replace(a.getAttribute(\"data-fragment\")+\"&hash=\"+\
encodeURIComponent(location.hash.slice(1)));})();";

/// Only the script above may run; nothing is fetched, framed, or submitted.
static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT));
    format!(
        "default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

/// Whether `csp` is the hop page's policy: what tells a client that reads pages (instead
/// of running them) that this 200 is the hop and not a page of the app or another of the
/// gateway's own.
pub fn is_hop_policy(csp: &str) -> bool {
    csp == CONTENT_SECURITY_POLICY.as_str()
}

/// The hop page: `authorize` is WeChat's authorize URL (the no-JavaScript way on),
/// `fragment` the gateway's own URL that takes the fragment (`…&hash=` is appended).
pub fn render(authorize: &str, fragment: &str) -> Response<Body> {
    let authorize = escape(authorize);
    let body = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<noscript><meta http-equiv=\"refresh\" content=\"0;url={authorize}\"></noscript>\
<title>正在登录 · Signing in</title><style>{style}</style></head><body><main>\
<h1>正在进入微信登录…</h1><h2>Signing in with WeChat…</h2>\
<p><a id=\"wxgate-go\" class=\"btn\" href=\"{authorize}\" data-fragment=\"{fragment}\">继续 · Continue</a></p>\
</main><script>{SCRIPT}</script></body></html>",
        style = super::STYLE,
        fragment = escape(fragment),
    );
    let mut response = super::build(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from(body),
    );
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&CONTENT_SECURITY_POLICY) {
        headers.insert("content-security-policy", csp);
    }
    // The state travels in these URLs: no other site learns it from a Referer.
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// The no-JavaScript target of a hop page (what a browser without scripts follows), or
/// `None` if `html` is not one. For clients that read pages rather than run them.
pub fn refresh_target(html: &str) -> Option<String> {
    let start = html.find("http-equiv=\"refresh\" content=\"0;url=")?;
    let rest = &html[start + "http-equiv=\"refresh\" content=\"0;url=".len()..];
    let end = rest.find('"')?;
    Some(unescape(&rest[..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_pages_script() {
        let csp = CONTENT_SECURITY_POLICY.as_str();
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT));
        assert!(
            csp.contains(&format!("script-src 'sha256-{digest}'")),
            "{csp}"
        );
        let script_src = csp
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert!(!script_src.contains("unsafe"), "{csp}");
    }

    #[test]
    fn urls_are_escaped_and_read_back() {
        let authorize = "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx1&state=a\"b<c#wechat_redirect";
        let response = render(authorize, "/_wxgate/fragment?state=S&app=x");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let html = http_body_util::BodyExt::collect(response.into_body());
        let html = futures_lite(html);
        assert!(!html.contains("a\"b<c"), "{html}");
        assert!(html.contains("data-fragment=\"/_wxgate/fragment?state=S&amp;app=x\""));
        assert_eq!(refresh_target(&html).as_deref(), Some(authorize));
    }

    fn futures_lite<
        F: std::future::Future<Output = Result<http_body_util::Collected<Bytes>, E>>,
        E: std::fmt::Debug,
    >(
        f: F,
    ) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime.block_on(f).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
