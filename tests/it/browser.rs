//! The demo's login in a real headless Chromium, driven over WebDriver (chromedriver): a
//! WeChat browser taps 允许 on the mock's consent page and lands on the exact URL it asked
//! for, two tabs log in at once, a refresh keeps the session, logout ends it, and a desktop
//! browser gets the QR page. It runs against `wxgate::demo` itself, so it also proves the
//! demo works. Screenshots of every step go to `target/e2e/`.
//!
//! One chromedriver for this binary, one test, the scenarios in sequence: Chromium is slow
//! to start and the machine is small.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use wxgate::demo::{Demo, DemoArgs, Webview};
use wxgate::identity::Algorithm;
use wxgate::mock::{DoubleLoad, Escapes, Quirks};

const WECHAT_UA: &str = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ2A.230505.002; wv) AppleWebKit/537.36 \
    (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 MicroMessenger/8.0.40.2420(0x28002857) \
    WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64";
const IOS_WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49(0x18003135) NetType/WIFI Language/zh_CN";
const DESKTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
/// Long enough for a slow, shared machine; a readiness limit, not a speed assertion.
const PATIENCE: Duration = Duration::from_secs(30);

struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// Chromium and chromedriver, or a printed reason to skip (a failure under CI=true).
fn tools() -> Option<Tools> {
    let chromium = find_command(&["chromium", "chromium-browser"]);
    let chromedriver = find_command(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Tools {
            chromium,
            chromedriver,
        }),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("chromium or chromedriver not found (Debian: chromium, chromium-driver)")
        }
        _ => {
            eprintln!(
                "skipping: chromium or chromedriver not found (Debian: chromium, chromium-driver)"
            );
            None
        }
    }
}

fn find_command(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = format!("{}/status", driver.url);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = match client.get(&status).send().await {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["value"]["ready"] == true),
            Err(_) => false,
        };
        if ready {
            return driver;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `scenario` in a fresh Chromium (own profile, given User-Agent and window), and
/// closes the browser whether the scenario passes or panics.
async fn in_browser<F, Fut>(
    tools: &Tools,
    driver: &Driver,
    ua: &str,
    window: (u32, u32),
    scenario: F,
) where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--no-proxy-server".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
        format!("--user-agent={ua}"),
        format!("--window-size={},{}", window.0, window.1),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), "chrome".into());
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": tools.chromium, "args": args}),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let outcome = AssertUnwindSafe(scenario(client.clone()))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Saves what the browser shows as `target/e2e/NAME.png`.
async fn screenshot(client: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn find(client: &Client, css: &str) -> fantoccini::elements::Element {
    let found = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await;
    match found {
        Ok(element) => element,
        Err(e) => {
            let url = client.current_url().await.ok();
            let source = client.source().await.unwrap_or_default();
            screenshot(client, "failure").await;
            panic!("no {css} on {url:?}: {e}\n{source}")
        }
    }
}

async fn text(client: &Client, css: &str) -> String {
    find(client, css).await.text().await.unwrap()
}

/// Waits until the text of `css` contains `needle` (scripts fill it in after the load).
async fn wait_for_text(client: &Client, css: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let now = text(client, css).await;
        if now.contains(needle) {
            return now;
        }
        if std::time::Instant::now() > deadline {
            screenshot(client, "failure").await;
            panic!("{css} says {now:?}, never {needle:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(client: &Client, css: &str) {
    find(client, css).await.click().await.unwrap();
}

fn origin(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn current(client: &Client) -> String {
    client.current_url().await.unwrap().to_string()
}

async fn authorize_calls(demo: &Demo) -> u64 {
    mock_stats(demo).await["/connect/oauth2/authorize"]
        .as_u64()
        .expect("authorize counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_login_works_in_headless_chromium() {
    let Some(tools) = tools() else { return };
    let demo = wxgate::demo::start(&DemoArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        algorithm: Algorithm::ES256,
        webview: Webview::Alternate,
        quirks: Quirks::default(),
    })
    .await
    .expect("the demo starts");
    let driver = start_driver(&tools.chromedriver).await;
    in_browser(&tools, &driver, WECHAT_UA, (430, 1500), |client| {
        wechat_browser(client, &demo)
    })
    .await;
    in_browser(&tools, &driver, IOS_WECHAT_UA, (390, 1400), |client| {
        ios_share_card(client, &demo)
    })
    .await;
    in_browser(&tools, &driver, DESKTOP_UA, (1024, 900), |client| {
        desktop_browser(client, &demo)
    })
    .await;
    in_browser(&tools, &driver, WECHAT_UA, (430, 1500), |client| {
        hash_routes(client, &demo, Some(&driver.url))
    })
    .await;
    in_browser(&tools, &driver, IOS_WECHAT_UA, (430, 1500), |client| {
        hash_routes(client, &demo, None)
    })
    .await;
    demo.shutdown().await;
}

/// A desktop Chromium walks the demo as Android WeChat (the demo adds WeChat's marker and
/// `X-Requested-With: com.tencent.mm` to every request, to the gateway and to the mock),
/// while the mock WeChat prefetches every callback without cookies and answers each grant
/// with a page that loads the callback twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_as_android_lands_double_loads_and_prefetches_in_headless_chromium() {
    let Some(tools) = tools() else { return };
    let demo = wxgate::demo::start(&DemoArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        algorithm: Algorithm::ES256,
        webview: Webview::Android,
        quirks: Quirks {
            prefetch: true,
            double_load: DoubleLoad::Concurrent,
            escapes: Escapes::Ascii,
        },
    })
    .await
    .expect("the demo starts");
    let driver = start_driver(&tools.chromedriver).await;
    in_browser(&tools, &driver, DESKTOP_UA, (430, 1500), |client| {
        android_quirks(client, &demo)
    })
    .await;
    demo.shutdown().await;
}

async fn android_quirks(client: Client, demo: &Demo) {
    // Silent snsapi_base on a hash-routed page.
    let base = format!("{}base/index.html?q=1#/lottery/42", demo.url);
    client.goto(&base).await.unwrap();
    find(&client, ".verified").await;
    assert_eq!(current(&client).await, base, "back on the exact URL");
    let received = client.source().await.unwrap();
    assert!(
        received.contains("<td>x-requested-with</td><td>com.tencent.mm</td>"),
        "the upstream saw Android's X-Requested-With: {received}"
    );
    let stats = mock_stats(demo).await;
    assert_eq!(stats["prefetches"], 1, "{stats}");
    assert_eq!(stats["/sns/oauth2/access_token"], 1, "{stats}");
    assert_eq!(
        repeats(demo).await,
        1,
        "the background load and the page's: one repeat\n{}",
        login_metrics(demo).await
    );
    screenshot(&client, "10-android-double-load-base").await;

    // The consent sheet, then 允许: the grant comes back through the same double load.
    client.goto(&demo.url).await.unwrap();
    click(&client, "a.weui-btn_primary").await;
    find(&client, ".nickname").await;
    assert_eq!(current(&client).await, format!("{}#", demo.url));
    let stats = mock_stats(demo).await;
    assert_eq!(stats["prefetches"], 2, "{stats}");
    assert_eq!(stats["/sns/oauth2/access_token"], 2, "{stats}");
    assert_eq!(repeats(demo).await, 2);
    screenshot(&client, "11-android-double-load-userinfo").await;
}

async fn mock_stats(demo: &Demo) -> serde_json::Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/_mock/stats", origin(demo.mock)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Later loads of a callback the gateway answered with the first load's outcome.
async fn repeats(demo: &Demo) -> u64 {
    let metrics = gateway_metrics(demo).await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("wxgate_callback_repeats_total{result=\"settled\"} "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the repeats counter")
}

/// The login counters, to show with a failed assertion.
async fn login_metrics(demo: &Demo) -> String {
    gateway_metrics(demo)
        .await
        .lines()
        .filter(|l| l.starts_with("wxgate_login") || l.starts_with("wxgate_callback"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn gateway_metrics(demo: &Demo) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/metrics", demo.gateway.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Two tabs log in at once, the first lands on its exact URL with the nickname; refresh keeps
/// the session; logout ends it.
async fn wechat_browser(client: Client, demo: &Demo) {
    let mock = origin(demo.mock);
    let first = format!("{}?from=singlemessage&isappinstalled=0", demo.url);
    client.goto(&first).await.unwrap();
    find(&client, "a.weui-btn_primary").await;
    assert!(
        current(&client).await.starts_with(&mock),
        "on WeChat's consent page"
    );
    assert_eq!(text(&client, "a.weui-btn_primary").await, "允许");
    // The simulator's picker: log in as the user whose nickname has emoji.
    click(&client, "details.picker summary").await;
    click(&client, "a[href*='mock_user=hanmeimei']").await;
    find(&client, "a.weui-btn_primary").await;
    assert_eq!(text(&client, ".nick").await, "韩梅梅🌸😀");
    screenshot(&client, "01-consent").await;

    // A second tab starts its own login while the first is still on the consent page.
    let first_tab = client.window().await.unwrap();
    let second_tab = client.new_window(true).await.unwrap().handle;
    client.switch_to_window(second_tab).await.unwrap();
    let second = format!("{}?tab=2", demo.url);
    client.goto(&second).await.unwrap();
    click(&client, "a.weui-btn_primary").await;
    assert_eq!(text(&client, ".nickname").await, "韩梅梅🌸😀");
    // The hash hop found no fragment and says so: a bare `#`, never WeChat's `#wechat_redirect`.
    assert_eq!(current(&client).await, format!("{second}#"));
    screenshot(&client, "02-second-tab").await;

    client.switch_to_window(first_tab).await.unwrap();
    click(&client, "a.weui-btn_primary").await;
    assert_eq!(text(&client, ".nickname").await, "韩梅梅🌸😀");
    assert_eq!(
        current(&client).await,
        format!("{first}#"),
        "back on the exact URL, query intact (an empty fragment: the page had none)"
    );
    assert!(
        text(&client, ".verified")
            .await
            .contains("Signature verified")
    );
    // The JS-SDK: jweixin's wx.config checked the gateway's signature of this exact URL.
    wait_for_text(&client, ".jssdk-status", "WeChat verified the signature").await;
    screenshot(&client, "03-demo-page").await;

    let before = authorize_calls(demo).await;
    client.refresh().await.unwrap();
    assert_eq!(text(&client, ".nickname").await, "韩梅梅🌸😀");
    assert_eq!(current(&client).await, format!("{first}#"));
    assert_eq!(
        authorize_calls(demo).await,
        before,
        "no trip to WeChat on refresh"
    );
    screenshot(&client, "04-after-refresh").await;

    click(&client, "a.logout").await;
    // `/` needs a login again: the browser is back on WeChat's consent page.
    find(&client, "a.weui-btn_primary").await;
    assert!(current(&client).await.starts_with(&mock));
    screenshot(&client, "05-after-logout").await;
    client.goto(&format!("{}public/", demo.url)).await.unwrap();
    assert!(
        text(&client, "section")
            .await
            .contains("no identity is forwarded"),
        "the public page is served without a login"
    );
}

/// iOS WeChat on a public page (no login) with a query and a hash route: the share card is
/// configured, WeChat's check of the signature passes, and the share API was called.
async fn ios_share_card(client: Client, demo: &Demo) {
    let page = format!("{}public/?from=timeline&名=值#/detail?id=1", demo.url);
    client.goto(&page).await.unwrap();
    wait_for_text(&client, ".jssdk-status", "WeChat verified the signature").await;
    let calls = client
        .execute(
            "return window.__mockWx.calls.map(function(c){return c.name+':'+c.ok;}).join(',')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(calls.as_str(), Some("updateAppMessageShareData:true"));
    screenshot(&client, "06-ios-share-card").await;
}

/// Hash-routed pages come back on their fragment: silent snsapi_base, then a scope upgrade
/// through the consent page. With `android_driver`, the browser is Android WeChat's
/// WebView: `X-Requested-With: com.tencent.mm` on every request, set through DevTools
/// (chromedriver's CDP endpoint).
async fn hash_routes(client: Client, demo: &Demo, android_driver: Option<&str>) {
    if let Some(driver) = android_driver {
        let session = client.session_id().await.unwrap().expect("a session id");
        devtools(driver, &session, "Network.enable", serde_json::json!({})).await;
        devtools(
            driver,
            &session,
            "Network.setExtraHTTPHeaders",
            serde_json::json!({"headers": {"X-Requested-With": "com.tencent.mm"}}),
        )
        .await;
    }
    let name = if android_driver.is_some() {
        "android"
    } else {
        "ios"
    };
    let base = format!("{}base/index.html?q=1#/lottery/42", demo.url);
    client.goto(&base).await.unwrap();
    find(&client, ".verified").await;
    assert_eq!(current(&client).await, base, "{name}: silent snsapi_base");
    screenshot(&client, &format!("08-{name}-hash-base")).await;

    let profile = format!("{}activity/index.html?from=timeline#/prize/7?x=1", demo.url);
    client.goto(&profile).await.unwrap();
    click(&client, "a.weui-btn_primary").await;
    find(&client, ".nickname").await;
    assert_eq!(current(&client).await, profile, "{name}: scope upgrade");
    screenshot(&client, &format!("09-{name}-hash-upgrade")).await;
}

/// One DevTools command through chromedriver's `goog/cdp/execute`.
async fn devtools(driver: &str, session: &str, cmd: &str, params: serde_json::Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!(
            "{}/session/{session}/goog/cdp/execute",
            driver.trim_end_matches('/')
        ))
        .json(&serde_json::json!({"cmd": cmd, "params": params}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{cmd}: {}",
        response.text().await.unwrap()
    );
}

/// A desktop browser switched out of the simulation sees the QR page of the URL.
async fn desktop_browser(client: Client, demo: &Demo) {
    client
        .goto(&format!("{}_demo/view?as=desktop", demo.url))
        .await
        .unwrap();
    assert_eq!(text(&client, "h1").await, "请在微信中打开此页面");
    find(&client, ".qr svg").await;
    assert_eq!(current(&client).await, demo.url);
    screenshot(&client, "07-desktop-qr").await;
}
