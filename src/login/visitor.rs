//! Who is asking: the WeChat family of in-app browsers (by User-Agent, see wechat-api.md §8)
//! and whether the request is a page navigation or a script call that wants JSON.
//! The login uses this to choose between a 302 to authorize, a 401 JSON and the non-WeChat page.

use std::net::IpAddr;

use http::header::{ACCEPT, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method};

/// The browser family, read from the User-Agent only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Browser {
    /// WeChat's in-app browser on a phone (`MicroMessenger`).
    WeChat,
    /// WeChat for Windows or macOS (`MicroMessenger` plus `WindowsWechat` / `MacWechat`).
    WeChatDesktop,
    /// WeCom / 企业微信 (`wxwork`; its UA also says `MicroMessenger`).
    WeCom,
    /// A mini-program `<web-view>` (`miniProgram`) or mini-program runtime (`MiniProgramEnv`).
    /// iOS web-views historically lack the marker and then read as [`Browser::WeChat`].
    MiniProgram,
    /// Anything else, including a missing or unreadable User-Agent.
    Other,
}

/// Which WeChat relatives go through WeChat's authorize page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowserPolicy {
    /// WeCom shares the authorize URL with WeChat; an Official Account appid may still be
    /// refused there, so operators of WeCom-only audiences may turn this off.
    pub wecom_is_wechat: bool,
    /// Mini-program web-views run inside WeChat and can complete the OAuth redirect.
    pub mini_program_is_wechat: bool,
    /// Desktop WeChat sends `MicroMessenger` and supports web authorization in its browser.
    pub desktop_is_wechat: bool,
}

impl Default for BrowserPolicy {
    fn default() -> Self {
        BrowserPolicy {
            wecom_is_wechat: true,
            mini_program_is_wechat: true,
            desktop_is_wechat: true,
        }
    }
}

/// The visitor as the gate hands it to the login: where the request comes from, which
/// browser sent it, and whether the answer must be JSON. Built once per request by the gate.
#[derive(Debug, Clone, Copy)]
pub struct Visitor<'a> {
    /// The client: the peer, or behind trusted proxies the address they name. Login limits
    /// count per address.
    pub ip: IpAddr,
    /// A page's script or an API client ([`is_script_call`]): failures are JSON.
    pub script: bool,
    /// Not a navigation a redirect could bring back: a script call, a non-GET method or a
    /// protocol upgrade. Such requests get a 401 JSON body, never a redirect.
    pub wants_json: bool,
    user_agent: Option<&'a HeaderValue>,
}

impl BrowserPolicy {
    pub fn from_config(browsers: &crate::config::BrowsersConfig) -> Self {
        BrowserPolicy {
            wecom_is_wechat: browsers.wecom,
            mini_program_is_wechat: browsers.mini_program,
            desktop_is_wechat: browsers.desktop,
        }
    }

    /// Whether a navigation from this visitor goes to WeChat's authorize page.
    pub fn is_wechat(&self, visitor: &Visitor<'_>) -> bool {
        match visitor.browser() {
            Browser::WeChat => true,
            Browser::WeChatDesktop => self.desktop_is_wechat,
            Browser::WeCom => self.wecom_is_wechat,
            Browser::MiniProgram => self.mini_program_is_wechat,
            Browser::Other => false,
        }
    }
}

impl<'a> Visitor<'a> {
    /// `script`: [`is_script_call`] of these headers; `upgrade`: the request asks to switch
    /// protocols (both read by the gate before, so not read again here).
    pub fn new(
        ip: IpAddr,
        method: &Method,
        headers: &'a HeaderMap,
        script: bool,
        upgrade: bool,
    ) -> Self {
        // A redirect to authorize and back would lose a POST body, and a protocol upgrade
        // (WebSocket handshake) is never a page: neither can be brought back by a redirect.
        let replayable = (method == Method::GET || method == Method::HEAD) && !upgrade;
        Visitor {
            ip,
            script,
            wants_json: script || !replayable,
            user_agent: headers.get(USER_AGENT),
        }
    }

    /// The browser family, read from the User-Agent when asked (it costs a scan of it, and a
    /// logged-in visitor's request never asks).
    pub fn browser(&self) -> Browser {
        self.user_agent
            .map_or(Browser::Other, |ua| browser_from_user_agent(ua.as_bytes()))
    }
}

/// Order matters: WeCom and mini-program UAs also contain `MicroMessenger`.
pub fn browser_from_user_agent(ua: &[u8]) -> Browser {
    if contains_ignore_case(ua, b"wxwork") {
        Browser::WeCom
    } else if contains_ignore_case(ua, b"miniprogram") {
        Browser::MiniProgram
    } else if contains_ignore_case(ua, b"micromessenger") {
        if contains_ignore_case(ua, b"windowswechat") || contains_ignore_case(ua, b"macwechat") {
            Browser::WeChatDesktop
        } else {
            Browser::WeChat
        }
    } else {
        Browser::Other
    }
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Whether the request comes from a page's script (XHR, fetch) or an API client rather than
/// a page load, read from the headers alone. Error pages follow the same rule as the gate.
///
/// `Sec-Fetch-Mode: navigate` or `Sec-Fetch-Dest: document` always mean a page load, whatever
/// else is sent. Android's WebView (XWEB and X5/TBS) adds `X-Requested-With: <app package>`
/// (`com.tencent.mm`, `com.tencent.wework`) to every request, page loads included, and X5
/// sends no `Sec-Fetch-*`: only the value `XMLHttpRequest` (jQuery, axios and friends) marks a
/// script (wechat-api.md §8; the corpus in tests/data/clients.tsv).
pub fn is_script_call(headers: &HeaderMap) -> bool {
    if is_navigation(headers) {
        return false;
    }
    is_xml_http_request(headers) || is_non_navigation_fetch(headers) || accept_prefers_json(headers)
}

fn is_navigation(headers: &HeaderMap) -> bool {
    let says = |name: &str, value: &[u8]| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value))
    };
    says("sec-fetch-mode", b"navigate")
        || says("sec-fetch-mode", b"nested-navigate")
        || says("sec-fetch-dest", b"document")
}

fn is_xml_http_request(headers: &HeaderMap) -> bool {
    headers.get_all("x-requested-with").iter().any(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"XMLHttpRequest")
    })
}

/// `Sec-Fetch-Mode` says the request is not a page load (`cors`, `no-cors`, `same-origin`,
/// `websocket`): what fetch and XHR send.
fn is_non_navigation_fetch(headers: &HeaderMap) -> bool {
    headers.contains_key("sec-fetch-mode")
}

/// `Accept` lists `application/json` (or a `+json` type) and does not list `text/html`.
/// Entries with `q=0` mean "not acceptable" and are ignored.
fn accept_prefers_json(headers: &HeaderMap) -> bool {
    let mut json = false;
    let mut html = false;
    let values = headers.get_all(ACCEPT).iter();
    for entry in values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = entry.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if parts.any(is_zero_quality) {
            continue;
        }
        json |= media == "application/json" || media.ends_with("+json");
        html |= media == "text/html";
    }
    json && !html
}

fn is_zero_quality(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOS_WECHAT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49(0x18003135) NetType/WIFI Language/zh_CN";
    const IOS_WECHAT_EN: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 16_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.42(0x18002a2d) NetType/WIFI Language/en";
    const ANDROID_X5: &str = "Mozilla/5.0 (Linux; Android 10; ELE-AL00 Build/HUAWEIELE-AL00; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/77.0.3865.120 MQQBrowser/6.2 TBS/045525 Mobile Safari/537.36 MMWEBID/3135 MicroMessenger/8.0.2.1860(0x2800023B) Process/tools WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64";
    const ANDROID_XWEB: &str = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ2A.230505.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 MicroMessenger/8.0.40.2420(0x28002857) WeChat/arm64";
    const ANDROID_MINIPROGRAM_WEBVIEW: &str = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ2A.230505.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 MMWEBSDK/20231202 MMWEBID/2247 MicroMessenger/8.0.47.2560(0x28002F35) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64 miniProgram/wx2ebfe5f20389c64a";
    const ANDROID_MINIPROGRAM_REQUEST: &str = "Mozilla/5.0 (Linux; Android 13; Pixel 7; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1110017 MMWEBSDK/20230805 MMWEBID/525 MicroMessenger/8.0.42.2460(0x28002A35) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64 MiniProgramEnv/android";
    const PC_MINIPROGRAM: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36 MicroMessenger/7.0.20.1781(0x6700143B) NetType/WIFI MiniProgramEnv/Windows WindowsWechat/WMPF WindowsWechat(0x63090a1b) XWEB/9165";
    const WECOM_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 wxwork/4.1.6 MicroMessenger/7.0.1 Language/zh ColorScheme/Light";
    const WECOM_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.5304.110 Safari/537.36 Language/zh wxwork/4.1.10 (MicroMessenger/6.2) WindowsWechat MailPlugin_Electron WeMail embeddisk";
    // The two desktop WeChat UAs are assembled from the markers in wechat-api.md §8
    // (`WindowsWechat(0x…)`, `MacWechat/…`); the reference has no complete sample.
    const WECHAT_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0.4044.138 Safari/537.36 NetType/WIFI MicroMessenger/7.0.20.1781(0x6700143B) WindowsWechat(0x63090a1b) XWEB/9165 Flue";
    const WECHAT_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) MicroMessenger/6.8.0(0x16080000) MacWechat/3.8.7(0x13080710) Safari/605.1.15 NetType/WIFI";
    const DESKTOP_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const IOS_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    const QQ_BROWSER: &str = "Mozilla/5.0 (Linux; U; Android 10; zh-cn; ELE-AL00 Build/HUAWEIELE-AL00) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/66.0.3359.126 MQQBrowser/10.1 Mobile Safari/537.36";

    type Headers<'a> = &'a [(&'static str, &'a str)];

    fn headers(pairs: Headers<'_>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn user_agents_are_sorted_into_browser_families() {
        let cases: &[(&str, Browser)] = &[
            (IOS_WECHAT, Browser::WeChat),
            (IOS_WECHAT_EN, Browser::WeChat),
            (ANDROID_X5, Browser::WeChat),
            (ANDROID_XWEB, Browser::WeChat),
            (ANDROID_MINIPROGRAM_WEBVIEW, Browser::MiniProgram),
            (ANDROID_MINIPROGRAM_REQUEST, Browser::MiniProgram),
            (PC_MINIPROGRAM, Browser::MiniProgram),
            (WECOM_IOS, Browser::WeCom),
            (WECOM_WINDOWS, Browser::WeCom),
            (WECHAT_WINDOWS, Browser::WeChatDesktop),
            (WECHAT_MAC, Browser::WeChatDesktop),
            (DESKTOP_CHROME, Browser::Other),
            (IOS_SAFARI, Browser::Other),
            (QQ_BROWSER, Browser::Other),
            ("micromessenger", Browser::WeChat),
            ("", Browser::Other),
        ];
        for (ua, want) in cases {
            assert_eq!(browser_from_user_agent(ua.as_bytes()), *want, "{ua}");
        }
    }

    /// What the login reads of a visitor, the way its policy reads it.
    struct Classified {
        browser: Browser,
        is_wechat_browser: bool,
        wants_json: bool,
    }

    fn classify(policy: &BrowserPolicy, method: &Method, headers: &HeaderMap) -> Classified {
        let visitor = Visitor::new(
            IpAddr::from([192, 0, 2, 1]),
            method,
            headers,
            is_script_call(headers),
            headers.contains_key(http::header::UPGRADE),
        );
        Classified {
            browser: visitor.browser(),
            is_wechat_browser: policy.is_wechat(&visitor),
            wants_json: visitor.wants_json,
        }
    }

    #[test]
    fn a_missing_user_agent_is_another_browser() {
        let client = classify(&BrowserPolicy::default(), &Method::GET, &HeaderMap::new());
        assert_eq!(client.browser, Browser::Other);
        assert!(!client.is_wechat_browser);
    }

    #[test]
    fn by_default_the_whole_wechat_family_goes_to_authorize() {
        let settings = BrowserPolicy::default();
        for ua in [
            IOS_WECHAT,
            ANDROID_X5,
            WECOM_IOS,
            ANDROID_MINIPROGRAM_WEBVIEW,
            WECHAT_WINDOWS,
            WECHAT_MAC,
        ] {
            let client = classify(&settings, &Method::GET, &headers(&[("user-agent", ua)]));
            assert!(client.is_wechat_browser, "{ua}");
            assert!(!client.wants_json, "{ua}");
        }
        for ua in [DESKTOP_CHROME, IOS_SAFARI, QQ_BROWSER] {
            let client = classify(&settings, &Method::GET, &headers(&[("user-agent", ua)]));
            assert!(!client.is_wechat_browser, "{ua}");
        }
    }

    #[test]
    fn settings_can_exclude_wecom_mini_programs_and_desktop() {
        let strict = BrowserPolicy {
            wecom_is_wechat: false,
            mini_program_is_wechat: false,
            desktop_is_wechat: false,
        };
        let cases: &[(&str, bool)] = &[
            (IOS_WECHAT, true),
            (ANDROID_XWEB, true),
            (WECOM_IOS, false),
            (WECOM_WINDOWS, false),
            (ANDROID_MINIPROGRAM_WEBVIEW, false),
            (PC_MINIPROGRAM, false),
            (WECHAT_WINDOWS, false),
            (WECHAT_MAC, false),
        ];
        for (ua, want) in cases {
            let client = classify(&strict, &Method::GET, &headers(&[("user-agent", ua)]));
            assert_eq!(client.is_wechat_browser, *want, "{ua}");
        }
    }

    #[test]
    fn script_calls_and_non_navigations_want_json() {
        let cases: &[(Headers, bool)] = &[
            (
                &[(
                    "accept",
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                )],
                false,
            ),
            (
                &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
                false,
            ),
            (&[("sec-fetch-mode", "NAVIGATE")], false),
            (&[("sec-fetch-mode", "nested-navigate")], false),
            (&[("accept", "*/*")], false),
            (&[], false),
            (&[("x-requested-with", "XMLHttpRequest")], true),
            (&[("x-requested-with", "com.tencent.mm")], false),
            (&[("x-requested-with", "com.tencent.wework")], false),
            (&[("x-requested-with", "")], false),
            (&[("x-requested-with", "xmlhttprequest")], true),
            (
                &[
                    ("x-requested-with", "XMLHttpRequest"),
                    ("sec-fetch-mode", "navigate"),
                ],
                false,
            ),
            (
                &[
                    ("accept", "application/json"),
                    ("sec-fetch-dest", "document"),
                ],
                false,
            ),
            (
                &[
                    ("x-requested-with", "com.tencent.mm"),
                    ("sec-fetch-mode", "cors"),
                ],
                true,
            ),
            (&[("sec-fetch-mode", "cors")], true),
            (&[("sec-fetch-mode", "no-cors")], true),
            (&[("sec-fetch-mode", "same-origin")], true),
            (&[("sec-fetch-mode", "websocket")], true),
            (&[("accept", "application/json")], true),
            (&[("accept", "application/json, text/plain, */*")], true),
            (&[("accept", "Application/JSON; charset=utf-8")], true),
            (&[("accept", "application/problem+json")], true),
            (
                &[("accept", "application/json"), ("accept", "text/plain")],
                true,
            ),
            (&[("accept", "text/html, application/json")], false),
            (
                &[("accept", "application/json"), ("accept", "text/html")],
                false,
            ),
            (&[("accept", "application/json;q=0, text/plain")], false),
            (&[("accept", "text/html;q=0, application/json")], true),
            (&[("accept", "text/plain")], false),
        ];
        for (pairs, want) in cases {
            let client = classify(&BrowserPolicy::default(), &Method::GET, &headers(pairs));
            assert_eq!(client.wants_json, *want, "{pairs:?}");
        }
    }

    #[test]
    fn only_get_and_head_count_as_navigations() {
        let wechat = headers(&[("user-agent", IOS_WECHAT), ("accept", "text/html")]);
        for (method, want) in [
            (Method::GET, false),
            (Method::HEAD, false),
            (Method::POST, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::OPTIONS, true),
        ] {
            let client = classify(&BrowserPolicy::default(), &method, &wechat);
            assert_eq!(client.wants_json, want, "{method}");
        }
    }

    #[test]
    fn a_non_utf8_user_agent_is_still_read() {
        let mut map = HeaderMap::new();
        let mut ua = b"Mozilla/5.0 \xff\xfe MicroMessenger/8.0.49".to_vec();
        map.insert(USER_AGENT, HeaderValue::from_bytes(&ua).unwrap());
        assert_eq!(
            classify(&BrowserPolicy::default(), &Method::GET, &map).browser,
            Browser::WeChat
        );
        ua.truncate(5);
        map.insert(USER_AGENT, HeaderValue::from_bytes(&ua).unwrap());
        assert_eq!(
            classify(&BrowserPolicy::default(), &Method::GET, &map).browser,
            Browser::Other
        );
    }
}
