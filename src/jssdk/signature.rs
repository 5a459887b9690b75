//! The `wx.config` signature and the page URLs the gateway agrees to sign: WeChat's JS-SDK
//! checks `sha1("jsapi_ticket=…&noncestr=…&timestamp=…&url=…")` against the URL the browser is
//! on (fragment removed, everything else as the browser has it), so the URL is signed byte
//! for byte and only ever checked, never normalised.

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use rand::Rng;
use rand::distr::Alphanumeric;

/// Longer page URLs are refused: WeChat's own limit on shared links is far below this.
pub const MAX_URL_BYTES: usize = 4096;
/// EasyWeChat and WxJava send 16 characters; WeChat accepts up to 32.
const NONCE_LEN: usize = 16;

/// Why a page URL is not signed. Messages are safe to show: they never repeat the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("the `url` parameter is missing: pass the page's location.href, encodeURIComponent-ed")]
    Missing,
    #[error("the page URL is longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("the page URL is not an absolute http(s) URL")]
    NotAbsolute,
    #[error(
        "the page URL holds spaces or control characters; send location.href as the browser has it"
    )]
    Unprintable,
    #[error("the page URL carries a user name or password")]
    Credentials,
    #[error("the page URL is not on this gateway's public origin or a route host")]
    ForeignOrigin,
}

/// Who may have a page signed: the gateway's public origin exactly, and any route host (over
/// http or https, any port: WeChat's JS接口安全域名 names a domain, not an origin).
#[derive(Debug, Clone, Default)]
pub struct SignedOrigins {
    public: Option<url::Origin>,
    hosts: Vec<String>,
}

impl SignedOrigins {
    pub fn new(
        public_url: Option<&url::Url>,
        route_hosts: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut hosts: Vec<String> = route_hosts
            .into_iter()
            .map(|host| host.to_ascii_lowercase())
            .collect();
        hosts.sort();
        hosts.dedup();
        SignedOrigins {
            public: public_url.map(url::Url::origin),
            hosts,
        }
    }

    fn allows(&self, url: &url::Url) -> bool {
        if self.public.as_ref() == Some(&url.origin()) {
            return true;
        }
        url.host_str()
            .is_some_and(|host| self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }
}

/// A page URL checked for signing: the exact string, its fragment cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageUrl(String);

impl PageUrl {
    /// `raw` is the decoded `url` parameter; it is kept as given up to its `#`.
    pub fn check(raw: Option<&str>, origins: &SignedOrigins) -> Result<Self, UrlRefused> {
        let raw = raw.filter(|r| !r.is_empty()).ok_or(UrlRefused::Missing)?;
        let page = raw.split_once('#').map_or(raw, |(before, _)| before);
        if page.len() > MAX_URL_BYTES {
            return Err(UrlRefused::TooLong);
        }
        if page.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlRefused::Unprintable);
        }
        let parsed = url::Url::parse(page).map_err(|_| UrlRefused::NotAbsolute)?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host().is_none()
            || !starts_with_ignore_case(page, &format!("{}://", parsed.scheme()))
        {
            return Err(UrlRefused::NotAbsolute);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(UrlRefused::Credentials);
        }
        if !origins.allows(&parsed) {
            return Err(UrlRefused::ForeignOrigin);
        }
        Ok(PageUrl(page.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `https:/x` and `https:x` parse like `https://x`; a browser's location.href never looks so.
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The lower-case hex SHA-1 WeChat compares; the four fields in this order, keys lower-case.
pub fn sign(ticket: &str, nonce: &str, timestamp: u64, url: &str) -> String {
    let plain = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
    hex::encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, plain.as_bytes()))
}

/// A fresh nonceStr of letters and digits.
pub fn nonce() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(NONCE_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_wechats_documented_example() {
        // The worked example of WeChat's JS-SDK documentation (附录1-JS-SDK使用权限签名算法).
        let signature = sign(
            "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
            "Wm3WZYTPz0wzccnW",
            1414587457,
            "http://mp.weixin.qq.com?params=value",
        );
        assert_eq!(signature, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    }

    fn origins() -> SignedOrigins {
        let public = url::Url::parse("https://m.example.com").unwrap();
        SignedOrigins::new(Some(&public), ["Shop.Example.com".to_owned()])
    }

    #[test]
    fn pages_on_our_origins_are_kept_byte_for_byte_without_fragment() {
        let cases = [
            (
                "https://m.example.com/a?x=1&y=%E4%B8%AD#/route?z=2",
                "https://m.example.com/a?x=1&y=%E4%B8%AD",
            ),
            (
                "https://m.example.com/活动/?名=值",
                "https://m.example.com/活动/?名=值",
            ),
            (
                "https://m.example.com/?a=%2B+b&from=singlemessage&isappinstalled=0",
                "https://m.example.com/?a=%2B+b&from=singlemessage&isappinstalled=0",
            ),
            ("https://M.EXAMPLE.COM/x", "https://M.EXAMPLE.COM/x"),
            (
                "http://shop.example.com:8080/p",
                "http://shop.example.com:8080/p",
            ),
            ("https://m.example.com", "https://m.example.com"),
        ];
        for (raw, signed) in cases {
            assert_eq!(
                PageUrl::check(Some(raw), &origins()).unwrap().as_str(),
                signed,
                "{raw}"
            );
        }
    }

    #[test]
    fn pages_elsewhere_or_malformed_are_refused() {
        let cases = [
            (None, UrlRefused::Missing),
            (Some(""), UrlRefused::Missing),
            (Some("https://evil.example.net/"), UrlRefused::ForeignOrigin),
            (
                Some("https://m.example.com.evil.net/"),
                UrlRefused::ForeignOrigin,
            ),
            (Some("http://m.example.com/"), UrlRefused::ForeignOrigin),
            (
                Some("https://m.example.com:8443/"),
                UrlRefused::ForeignOrigin,
            ),
            (
                Some("https://user:pw@m.example.com/"),
                UrlRefused::Credentials,
            ),
            (Some("/relative/page"), UrlRefused::NotAbsolute),
            (Some("javascript:alert(1)"), UrlRefused::NotAbsolute),
            (Some("https:m.example.com/x"), UrlRefused::NotAbsolute),
            (Some("https://m.example.com/a b"), UrlRefused::Unprintable),
            (Some("https://m.example.com/\n"), UrlRefused::Unprintable),
        ];
        for (raw, refused) in cases {
            assert_eq!(PageUrl::check(raw, &origins()), Err(refused), "{raw:?}");
        }
        let long = format!("https://m.example.com/?q={}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(
            PageUrl::check(Some(&long), &origins()),
            Err(UrlRefused::TooLong)
        );
    }

    #[test]
    fn nonces_are_fresh_alphanumerics() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
