//! `wxgate demo` as a newcomer runs it: the real binary on free ports, the URL it prints,
//! and the whole login over plain HTTP — redirects followed with cookies, consent given on
//! the mock's page — down to the demo page that shows the nickname.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use reqwest::cookie::CookieStore;

use crate::support::wechat::{follow, plain_browser_with_jar, through_hop};

const BIN: &str = env!("CARGO_BIN_EXE_wxgate");
const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";
const DESKTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

/// The demo binary; killed when dropped.
struct DemoProcess {
    child: Child,
    /// What the banner says to open.
    url: String,
    /// The mock WeChat's origin, from the banner.
    mock: String,
    /// Kept open so the process never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `wxgate demo --listen 127.0.0.1:0` and reads its banner; the banner is printed once
/// every part listens.
fn start_demo() -> DemoProcess {
    start_demo_with(&[])
}

fn start_demo_with(extra: &[&str]) -> DemoProcess {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wxgate demo starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut url, mut mock) = (None, None);
    let mut banner = String::new();
    while url.is_none() || mock.is_none() {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            panic!("wxgate demo ended before printing its URL:\n{banner}");
        }
        banner.push_str(&line);
        let first_url = || {
            line.split_whitespace()
                .find(|word| word.starts_with("http://"))
                .map(str::to_owned)
        };
        if line.contains("Open in a browser") {
            url = first_url();
        } else if line.contains("mock WeChat") {
            mock = first_url();
        }
    }
    DemoProcess {
        child,
        url: url.unwrap(),
        mock: mock.unwrap(),
        _stdout: stdout,
    }
}

/// A browser of exactly this User-Agent (the demo is tried in iOS WeChat), with cookies.
fn browser(ua: &str) -> reqwest::Client {
    plain_browser_with_jar(ua).0
}

/// The authorize URL behind a hop page.
async fn authorize_target(response: reqwest::Response) -> String {
    through_hop(response).await.1.expect("the hash hop page")
}

/// The `href` of the first link whose (HTML-escaped) href contains `needle`.
fn link(html: &str, needle: &str) -> String {
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.contains(needle))
        .unwrap_or_else(|| panic!("no link with {needle:?} in {html}"))
        .replace("&amp;", "&")
}

/// Opens `page`, picks `user` on the mock's consent page, taps 允许 and returns the final
/// page's URL and HTML.
async fn log_in(
    demo: &DemoProcess,
    client: &reqwest::Client,
    page: &str,
    user: &str,
) -> (String, String) {
    let (hops, consent) = follow(client, page).await;
    assert!(hops[0].starts_with(&demo.mock), "{hops:?}");
    let html = consent.text().await.unwrap();
    assert!(html.contains("允许") && html.contains("拒绝"), "{html}");
    let as_user = format!("{}{}", demo.mock, link(&html, &format!("mock_user={user}")));
    let html = client
        .get(&as_user)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let allow = format!("{}{}", demo.mock, link(&html, "action=allow"));
    let (hops, last) = follow(client, &allow).await;
    assert_eq!(last.status(), 200, "{hops:?}");
    let url = last.url().to_string();
    (url, last.text().await.unwrap())
}

#[tokio::test]
async fn the_printed_url_sends_a_wechat_browser_to_the_mock_authorize_page() {
    let demo = start_demo();
    assert!(demo.url.starts_with("http://127.0.0.1:"), "{}", demo.url);
    let response = browser(WECHAT_UA).get(&demo.url).send().await.unwrap();
    let location = &authorize_target(response).await;
    let authorize = format!("{}/connect/oauth2/authorize?appid=", demo.mock);
    assert!(location.starts_with(&authorize), "{location}");
    assert!(location.contains("&scope=snsapi_userinfo&"), "{location}");
    let callback = format!("{}_wxgate/callback", demo.url);
    let encoded: String = url::form_urlencoded::byte_serialize(callback.as_bytes()).collect();
    assert!(
        location.contains(&format!("redirect_uri={encoded}&")),
        "{location}"
    );
}

#[tokio::test]
async fn the_whole_login_completes_over_http_and_the_page_shows_the_nickname() {
    let demo = start_demo();
    let (client, jar) = plain_browser_with_jar(WECHAT_UA);
    let page = format!("{}?from=singlemessage&isappinstalled=0", demo.url);
    let (landed, html) = log_in(&demo, &client, &page, "hanmeimei").await;
    assert_eq!(landed, page, "back on the exact URL first asked for");
    assert!(
        html.contains("<div class=\"nickname\">韩梅梅🌸😀</div>"),
        "{html}"
    );
    assert!(html.contains("Signature verified"), "{html}");
    assert!(
        html.contains("/_wxgate/jwks.json"),
        "verified with the gateway's JWKS"
    );
    // The session cookie stays between the browser and the gateway: not on the page.
    let cookies = jar.cookies(&demo.url.parse().unwrap()).unwrap();
    let session = cookies
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|pair| pair.strip_prefix("wxgate_session="))
        .expect("a session cookie")
        .to_owned();
    assert!(session.len() > 20);
    assert!(!html.contains(&session));
    assert!(!html.contains("wxgate_session"), "{html}");
    // The avatar in the identity is one the demo can show, served by the mock.
    let avatar = link(
        &html.replace("src=\"", "href=\""),
        "/_mock/avatar?user=hanmeimei",
    );
    let image = client.get(&avatar).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/svg+xml");

    // A nickname with control bytes is shown, escaped, without breaking the page.
    let other = browser(WECHAT_UA);
    let (_, html) = log_in(&demo, &other, &demo.url, "bell").await;
    assert!(html.contains("阿\\u{7}铃\\u{14}"), "{html}");
    assert!(!html.contains('\u{7}') && !html.contains('\u{14}'));
}

#[tokio::test]
async fn a_desktop_browser_is_simulated_as_wechat_until_it_switches_to_the_desktop_view() {
    let demo = start_demo();
    let client = browser(DESKTOP_UA);
    let simulated = client.get(&demo.url).send().await.unwrap();
    let location = &authorize_target(simulated).await;
    assert!(location.starts_with(&demo.mock), "{location}");

    let (hops, qr) = follow(&client, &format!("{}_demo/view?as=desktop", demo.url)).await;
    assert_eq!(hops, ["/_wxgate/logout?rd=%2F", "/"]);
    assert_eq!(qr.status(), 200);
    let html = qr.text().await.unwrap();
    assert!(
        html.contains("请在微信中打开此页面") && html.contains("<svg"),
        "{html}"
    );

    let (hops, _) = follow(&client, &format!("{}_demo/view?as=wechat", demo.url)).await;
    assert_eq!(hops[0], "/");
    assert!(hops[1].starts_with(&demo.mock), "{hops:?}");
}

#[tokio::test]
async fn with_hs256_the_demo_app_verifies_with_the_shared_secret() {
    let demo = start_demo_with(&["--algorithm", "HS256"]);
    let client = browser(WECHAT_UA);
    let (_, html) = log_in(&demo, &client, &demo.url, "lilei").await;
    assert!(
        html.contains("<div class=\"nickname\">李雷</div>"),
        "{html}"
    );
    assert!(html.contains("Signature verified"), "{html}");
    assert!(html.contains("the shared HS256 secret"), "{html}");
    // Nothing is published for a shared secret.
    let jwks: serde_json::Value = client
        .get(format!("{}_wxgate/jwks.json", demo.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"], serde_json::json!([]));
}
