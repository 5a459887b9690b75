//! The JS-SDK through real sockets against the mock WeChat: `wx.config` signatures that the
//! mock's own check (the one its jweixin stand-in runs in the browser) accepts for the exact
//! page URL, never for a foreign site; one token and one ticket per account shared by
//! gateways over a real Redis; a stale token fetched again once; failures that name the
//! back-office setting to fix while /readyz stays ready.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use support::redis_server::{self, RedisServer};
use support::upstream::Upstream;
use support::wechat::{mock_stats, world_with};
use wxgate::config::{Config, StoreKind};
use wxgate::mock::{MockConfig, MockWeChat};

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Asks the gateway at `gateway` to sign `page`.
async fn signature(gateway: SocketAddr, page: &str) -> reqwest::Response {
    support::client()
        .get(format!("http://{gateway}/_wxgate/jssdk?url={}", enc(page)))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

/// What WeChat's client (the mock's jweixin stand-in) says of `config` on the page `url`.
async fn wechat_says(mock: SocketAddr, config: &serde_json::Value, url: &str) -> String {
    let query = format!(
        "appId={}&timestamp={}&nonceStr={}&signature={}&url={}&jsApiList=updateAppMessageShareData",
        enc(config["appId"].as_str().unwrap()),
        config["timestamp"].as_u64().unwrap(),
        enc(config["nonceStr"].as_str().unwrap()),
        enc(config["signature"].as_str().unwrap()),
        enc(url),
    );
    let answer: serde_json::Value =
        reqwest::get(format!("http://{mock}/_mock/jssdk/config?{query}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    answer["errMsg"].as_str().unwrap().to_owned()
}

async fn set_faults(mock: SocketAddr, faults: serde_json::Value) {
    let status = support::client()
        .post(format!("http://{mock}/_mock/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

fn calls(stats: &serde_json::Value, path: &str) -> u64 {
    stats[path].as_u64().unwrap()
}

async fn readyz(gw: &wxgate::server::Running) -> u16 {
    reqwest::get(format!("http://{}/readyz", gw.admin_addr))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn signatures_verify_for_pages_with_queries_chinese_and_percent_encodings() {
    let w = world_with(|_, _| {}).await;
    let o = &w.origin;
    let pages = [
        format!("{o}/"),
        format!("{o}/activity/share?id=42&from=singlemessage&isappinstalled=0"),
        format!("{o}/活动/页面?名字=张三&city=北京"),
        format!("{o}/%E6%B4%BB%E5%8A%A8/?q=%E4%B8%AD%20x&plus=a%2Bb+c&empty=&dup=1&dup=2"),
        format!("{o}/spa/index.html?x=1"),
    ];
    for page in &pages {
        let response = signature(w.gw.addr, &format!("{page}#/route?tab=2")).await;
        assert_eq!(response.status(), 200, "{page}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let config: serde_json::Value = response.json().await.unwrap();
        let mut keys: Vec<&str> = config
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["appId", "nonceStr", "signature", "timestamp"],
            "nothing else leaves"
        );
        assert_eq!(config["appId"], wxgate::mock::DEFAULT_APPID);
        // Signed for the page as the browser has it, fragment cut: WeChat's check agrees.
        assert_eq!(
            wechat_says(w.mock, &config, page).await,
            "config:ok",
            "{page}"
        );
        // ... and for nothing else: one byte of the query, or the fragment, changes it.
        let other = page.replacen('=', "%3D", 1);
        if other != *page {
            assert_eq!(
                wechat_says(w.mock, &config, &other).await,
                "config:invalid signature"
            );
        }
        let with_fragment = format!("{page}#/route?tab=2");
        assert_eq!(
            wechat_says(w.mock, &config, &with_fragment).await,
            "config:invalid signature"
        );
    }
    let stats = mock_stats(w.mock).await;
    assert_eq!(
        calls(&stats, "/cgi-bin/stable_token"),
        1,
        "one token for every page"
    );
    assert_eq!(
        calls(&stats, "/cgi-bin/ticket/getticket"),
        1,
        "one ticket for every page"
    );
    assert_eq!(
        calls(&stats, "/cgi-bin/token"),
        0,
        "never the token that voids the customer's"
    );
}

#[tokio::test]
async fn foreign_origins_and_malformed_urls_are_refused_before_any_wechat_call() {
    let w = world_with(|_, _| {}).await;
    let port = w.gw.addr.port();
    let cases = [
        ("https://evil.example.net/phish", 403, "foreign_origin"),
        (
            &format!("http://127.0.0.1.evil.net:{port}/") as &str,
            403,
            "foreign_origin",
        ),
        (
            &format!("http://127.0.0.1:{}/", port + 1),
            403,
            "foreign_origin",
        ),
        (&format!("https://127.0.0.1:{port}/"), 403, "foreign_origin"),
        (&format!("http://user:pw@127.0.0.1:{port}/"), 400, "bad_url"),
        ("/relative", 400, "bad_url"),
        ("javascript:alert(1)", 400, "bad_url"),
    ];
    for (page, status, error) in cases {
        let response = signature(w.gw.addr, page).await;
        assert_eq!(response.status().as_u16(), status, "{page}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{page}");
        assert!(body.get("signature").is_none());
    }
    let missing = support::get(&w.gw, "/_wxgate/jssdk").await;
    assert_eq!(missing.status(), 400);
    let post = support::client()
        .post(support::url(&w.gw, "/_wxgate/jssdk?url=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let stats = mock_stats(w.mock).await;
    assert_eq!(calls(&stats, "/cgi-bin/stable_token"), 0);
    assert_eq!(calls(&stats, "/cgi-bin/ticket/getticket"), 0);
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_jssdk_signatures_total{result=\"refused\"} 8"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_helper_script_is_served_as_javascript() {
    let w = world_with(|_, _| {}).await;
    let response = support::get(&w.gw, "/_wxgate/jssdk.js").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/javascript")
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("wx.config") && text.contains("data-apis"));
}

/// A gateway with one public route whose shared store is the Redis at `redis_url`.
async fn gateway_on(
    mock: SocketAddr,
    up: SocketAddr,
    redis_url: &str,
    public_url: &str,
) -> wxgate::server::Running {
    let mut config: Config = support::config_with_routes(&[("/", up)]);
    config.server.public_url = Some(url::Url::parse(public_url).unwrap());
    config.wechat.appid = wxgate::mock::DEFAULT_APPID.into();
    config.wechat.secret = wxgate::Secret::new(wxgate::mock::DEFAULT_SECRET);
    config.wechat.api_base = url::Url::parse(&format!("http://{mock}")).unwrap();
    config.session.store = StoreKind::Redis;
    config.session.redis_url = wxgate::Secret::new(redis_url);
    config.session.secret = wxgate::Secret::new("test-session-secret-0123456789-abcdefghij");
    config.identity.algorithm = wxgate::identity::Algorithm::HS256;
    config.identity.secret = wxgate::Secret::new("test-identity-secret-0123456789-abcdefghij");
    config.identity.key_file = None;
    support::start(&config).await
}

async fn start_mock(config: MockConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(MockWeChat::new(config).serve(listener, std::future::pending()));
    addr
}

#[tokio::test]
async fn two_gateways_on_one_redis_fetch_the_ticket_once_under_a_burst() {
    if !redis_server::available() {
        return;
    }
    let redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let mock = start_mock(MockConfig::default()).await;
    // Slow enough that every request of the burst arrives while the first fetch is under way.
    set_faults(mock, serde_json::json!({"latency_ms": 300})).await;
    let public = "http://127.0.0.1:18080";
    let a = gateway_on(mock, up.addr, &redis.url(), public).await;
    let b = gateway_on(mock, up.addr, &redis.url(), public).await;
    let page = format!("{public}/campaign/?id=7");
    let burst = (0..200).map(|i| {
        let gateway = if i % 2 == 0 { a.addr } else { b.addr };
        let page = page.clone();
        tokio::spawn(async move { signature(gateway, &page).await })
    });
    let mut configs = Vec::new();
    for request in burst {
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200);
        configs.push(response.json::<serde_json::Value>().await.unwrap());
    }
    let stats = mock_stats(mock).await;
    assert_eq!(calls(&stats, "/cgi-bin/ticket/getticket"), 1, "{stats}");
    assert_eq!(calls(&stats, "/cgi-bin/stable_token"), 1, "{stats}");
    for config in [&configs[0], &configs[1], &configs[199]] {
        assert_eq!(wechat_says(mock, config, &page).await, "config:ok");
    }
    // The token and ticket rest sealed in Redis: no key or value holds them in clear.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter().any(|k| k.starts_with("wxgate:v:jssdk:")),
        "{keys:?}"
    );
    for key in keys.iter().filter(|k| k.starts_with("wxgate:v:")) {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&value).contains("93_"),
            "{key} is sealed"
        );
    }
}

#[tokio::test]
async fn an_expired_ticket_is_replaced_and_a_voided_token_fetched_again_once() {
    let w = world_with(|m, _| m.faults.jsapi_ticket_ttl_secs = 4).await;
    let page = format!("{}/share", w.origin);
    let first: serde_json::Value = signature(w.gw.addr, &page).await.json().await.unwrap();
    assert_eq!(wechat_says(w.mock, &first, &page).await, "config:ok");
    // Another service of the account forces a new stable token: the gateway's is void now.
    let forced: serde_json::Value = support::client()
        .post(format!("http://{}/cgi-bin/stable_token", w.mock))
        .json(&serde_json::json!({
            "grant_type": "client_credential",
            "appid": wxgate::mock::DEFAULT_APPID,
            "secret": wxgate::mock::DEFAULT_SECRET,
            "force_refresh": true,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(forced["access_token"].is_string(), "{forced}");
    // The ticket runs out (4 s at the mock).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        wechat_says(w.mock, &first, &page).await,
        "config:invalid signature"
    );
    let second: serde_json::Value = signature(w.gw.addr, &page).await.json().await.unwrap();
    assert_eq!(wechat_says(w.mock, &second, &page).await, "config:ok");
    let stats = mock_stats(w.mock).await;
    // Token: first fetch, the other service's force, the refetch after 40001.
    assert_eq!(calls(&stats, "/cgi-bin/stable_token"), 3, "{stats}");
    // Ticket: first, refused with 40001, fetched with the new token.
    assert_eq!(calls(&stats, "/cgi-bin/ticket/getticket"), 3, "{stats}");
    let metrics = support::metrics(&w.gw).await;
    for line in [
        "wxgate_jssdk_fetches_total{what=\"ticket\",result=\"40001\"} 1",
        "wxgate_jssdk_fetches_total{what=\"ticket\",result=\"ok\"} 2",
        "wxgate_jssdk_fetches_total{what=\"token\",result=\"ok\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn quota_exhaustion_is_reported_with_the_setting_to_fix_and_readyz_stays_ready() {
    let w = world_with(|m, _| m.faults.ticket_daily_quota = 0).await;
    let page = format!("{}/share", w.origin);
    for _ in 0..3 {
        let response = signature(w.gw.addr, &page).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "quota_exhausted", "{body}");
        assert_eq!(body["errcode"], 45009);
        assert_eq!(body["fetching"], "ticket");
        assert!(body["fix"].as_str().unwrap().contains("接口权限"), "{body}");
        assert!(!body.to_string().contains("93_"), "no token in {body}");
    }
    let stats = mock_stats(w.mock).await;
    assert_eq!(
        calls(&stats, "/cgi-bin/ticket/getticket"),
        1,
        "the failure is remembered"
    );
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_jssdk_fetches_total{what=\"ticket\",result=\"45009\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wxgate_jssdk_signatures_total{result=\"failed\"} 3"),
        "{metrics}"
    );
    assert_eq!(readyz(&w.gw).await, 200);
}

#[tokio::test]
async fn an_address_outside_the_ip_whitelist_is_named_with_the_setting_to_fix() {
    let w = world_with(|m, _| m.faults.ip_whitelist = vec!["203.0.113.7".into()]).await;
    let response = signature(w.gw.addr, &format!("{}/", w.origin)).await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "ip_not_whitelisted", "{body}");
    assert_eq!(body["errcode"], 40164);
    assert_eq!(body["fetching"], "token");
    assert!(body["fix"].as_str().unwrap().contains("IP白名单"), "{body}");
    assert!(!body.to_string().contains(wxgate::mock::DEFAULT_SECRET));
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_jssdk_fetches_total{what=\"token\",result=\"40164\"} 1"),
        "{metrics}"
    );
    assert_eq!(readyz(&w.gw).await, 200);
}
