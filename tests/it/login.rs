//! The WeChat login end to end through real sockets: gateway, mock WeChat, and an upstream
//! that records what reached it.

use crate::support;

use support::wechat::{
    DESKTOP_UA, Login, WECHAT_UA, authorize_target, browser, browser_with_jar, follow, log_in,
    log_in_with, mock_stats, set_mock_faults, until_callback, verify_identity, world, world_with,
};

#[tokio::test]
async fn base_login_lands_on_the_exact_url_with_a_verified_identity() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let start = format!(
        "{}/base/page.html?from=singlemessage&isappinstalled=0",
        w.origin
    );
    // A WeChat navigation gets the hash hop page, whose way on is the authorize URL.
    let first = b.get(&start).send().await.unwrap();
    let location = authorize_target(first).await;
    let expected_prefix = format!(
        "http://{}/connect/oauth2/authorize?appid=wx2ebfe5f20389c64a&redirect_uri={}&response_type=code&scope=snsapi_base&state=",
        w.mock,
        url::form_urlencoded::byte_serialize(format!("{}/_wxgate/callback", w.origin).as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    );
    assert!(location.starts_with(&expected_prefix), "{location}");
    assert!(
        location.ends_with("&connect_redirect=1#wechat_redirect"),
        "{location}"
    );
    let (hops, last) = follow(&b, &start).await;
    assert_eq!(last.status(), 200, "{hops:?}");
    assert_eq!(
        hops.last().unwrap(),
        "/base/page.html?from=singlemessage&isappinstalled=0"
    );
    let seen = w.up.last();
    assert_eq!(
        seen.uri,
        "/base/page.html?from=singlemessage&isappinstalled=0"
    );
    let token = seen.headers["x-wechat-identity"]
        .to_str()
        .unwrap()
        .to_owned();
    let jwks = b
        .get(format!("{}/_wxgate/jwks.json", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    // HS256 keys are never published: verify with the shared secret instead.
    let claims = verify_identity(&token);
    assert_eq!(claims.scope, "snsapi_base");
    assert_eq!(
        seen.headers["x-wechat-openid"].to_str().unwrap(),
        claims.openid
    );

    // Later requests make no WeChat call.
    let before = mock_stats(w.mock).await;
    for i in 0..20 {
        let r = b
            .get(format!("{}/base/asset{i}.js", w.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(mock_stats(w.mock).await, before);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_nickname_with_a_lone_surrogate_logs_in_with_it_repaired() {
    // The mock writes xiaohong's nickname as "\u5c0f\u7ea2\ud83d", as WeChat does with an
    // emoji cut in half; a strict parse would answer 502 on every login of this visitor.
    let w = world().await;
    let (b, jar) = browser_with_jar(WECHAT_UA);
    let mock_url = url::Url::parse(&format!("http://{}/", w.mock)).unwrap();
    jar.add_cookie_str("mock_user=xiaohong", &mock_url);
    let Login {
        browser: b,
        hops,
        landing: last,
        ..
    } = log_in_with((b, jar), &w.origin, "/vip/index.html").await;
    assert_eq!(last.status(), 200, "{hops:?}");
    let me: serde_json::Value = b
        .get(format!("{}/_wxgate/me", w.origin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["nickname"], "小红\u{FFFD}", "{me}");
    assert_eq!(
        support::wechat::last_identity(&w).nickname.as_deref(),
        Some("小红\u{FFFD}")
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn userinfo_login_carries_the_profile_and_me_shows_it_without_tokens() {
    let w = world().await;
    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/index.html").await;
    assert_eq!(last.status(), 200);
    let seen = w.up.last();
    let nickname = seen.headers["x-wechat-nickname"].to_str().unwrap();
    assert!(!nickname.is_empty());
    let me: serde_json::Value = b
        .get(format!("{}/_wxgate/me", w.origin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["scope"], "snsapi_userinfo");
    assert!(me["nickname"].is_string(), "{me}");
    let text = me.to_string();
    assert!(!text.contains("access_token") && !text.contains("refresh_token"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn base_session_is_upgraded_on_a_userinfo_route() {
    let w = world().await;
    let Login { browser: b, .. } = log_in(&w.origin, "/base/x").await;
    let resp = b.get(format!("{}/vip/x", w.origin)).send().await.unwrap();
    assert!(
        authorize_target(resp)
            .await
            .contains("scope=snsapi_userinfo")
    );
    let (_, last) = follow(&b, &format!("{}/vip/x", w.origin)).await;
    assert_eq!(last.status(), 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn xhr_gets_401_json_and_other_browsers_get_their_route_behaviour() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let xhr = b
        .get(format!("{}/base/api", w.origin))
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 401);
    let body: serde_json::Value = xhr.json().await.unwrap();
    assert!(
        body["login_url"]
            .as_str()
            .unwrap()
            .starts_with("/_wxgate/start?rd=")
    );

    let desktop = browser(DESKTOP_UA);
    let qr = desktop
        .get(format!("{}/base/page", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(qr.status(), 200);
    let page = qr.text().await.unwrap();
    assert!(
        page.contains("<svg") && page.contains("微信"),
        "{page:.300}"
    );
    assert_eq!(
        desktop
            .get(format!("{}/deny/page", w.origin))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let anon = desktop
        .get(format!("{}/anon/page", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 200);
    assert!(!w.up.last().headers.contains_key("x-wechat-identity"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn forged_or_missing_state_never_exchanges_a_code() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    b.get(format!("{}/base/x", w.origin)).send().await.unwrap();
    for query in [
        "code=abc&state=forged00000000000000000000000000",
        "code=abc",
        "state=x",
    ] {
        let resp = b
            .get(format!("{}/_wxgate/callback?{query}", w.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    }
    let stats = mock_stats(w.mock).await;
    assert!(
        stats.to_string().contains("codes_exchanged\":0")
            || !stats.to_string().contains("access_token"),
        "{stats}"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    b.get(format!("{}/public", w.origin))
        .header("X-WeChat-Identity", "forged")
        .header("x_wechat_openid", "forged")
        .header("X-WECHAT-NICKNAME", "forged")
        .send()
        .await
        .unwrap();
    let seen = w.up.last();
    for (name, value) in &seen.headers {
        assert!(value != "forged", "{name} reached the upstream");
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn logout_revokes_a_copied_cookie() {
    let w = world().await;
    let Login {
        browser: b, jar, ..
    } = log_in(&w.origin, "/base/x").await;
    let me = b
        .get(format!("{}/_wxgate/me", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let session_cookie = {
        use reqwest::cookie::CookieStore;
        let url = reqwest::Url::parse(&w.origin).unwrap();
        let held = jar.cookies(&url).unwrap();
        held.to_str().unwrap().to_owned()
    };
    assert!(
        session_cookie.contains("wxgate_session="),
        "{session_cookie}"
    );
    let out = b
        .get(format!("{}/_wxgate/logout?rd=/bye", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    assert_eq!(out.headers()["location"], "/bye");
    let thief = browser(WECHAT_UA);
    let replay = thief
        .get(format!("{}/base/x", w.origin))
        .header("cookie", session_cookie)
        .send()
        .await
        .unwrap();
    assert!(
        authorize_target(replay)
            .await
            .contains("/connect/oauth2/authorize?"),
        "a revoked session must send the visitor to login again"
    );
    let evil = b
        .get(format!("{}/_wxgate/logout?rd=//evil.example", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(evil.headers()["location"], "/");
    w.gw.shutdown().await;
}

/// One row of tests/data/clients.tsv.
struct ClientRow {
    name: String,
    decision: String,
    user_agent: String,
    headers: Vec<(String, String)>,
}

fn client_corpus() -> Vec<ClientRow> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/clients.tsv"
    ))
    .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let columns: Vec<&str> = line.split('\t').collect();
            assert_eq!(columns.len(), 5, "five columns: {line}");
            assert!(!columns[4].trim().is_empty(), "a source for {}", columns[0]);
            ClientRow {
                name: columns[0].to_owned(),
                decision: columns[1].to_owned(),
                user_agent: columns[2].to_owned(),
                headers: columns[3]
                    .split(" ;; ")
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        let (name, value) = h.split_once(": ").unwrap();
                        (name.to_owned(), value.to_owned())
                    })
                    .collect(),
            }
        })
        .collect()
}

fn request_as(row: &ClientRow, url: &str) -> reqwest::RequestBuilder {
    let mut request = browser(&row.user_agent).get(url);
    for (name, value) in &row.headers {
        request = request.header(name, value);
    }
    request
}

#[tokio::test]
async fn every_client_in_the_corpus_gets_its_decision_and_error_pages_follow_it() {
    let w = world().await;
    let corpus = client_corpus();
    assert!(corpus.len() >= 20, "{} rows", corpus.len());
    for row in &corpus {
        let page = request_as(row, &format!("{}/base/page?from=singlemessage", w.origin))
            .send()
            .await
            .unwrap();
        let name = &row.name;
        match row.decision.as_str() {
            "authorize" => {
                let target = authorize_target(page).await;
                assert!(
                    target.contains("/connect/oauth2/authorize?")
                        && target.contains("scope=snsapi_base"),
                    "{name}: {target}"
                );
            }
            "script" => {
                assert_eq!(page.status(), 401, "{name}");
                let body: serde_json::Value = page.json().await.unwrap();
                assert_eq!(body["error"], "login_required", "{name}");
            }
            "non_wechat" => {
                assert_eq!(page.status(), 200, "{name}");
                let html = page.text().await.unwrap();
                assert!(html.contains("请在微信中打开此页面"), "{name}: the QR page");
            }
            other => panic!("{name}: unknown decision {other}"),
        }
        // A failure page speaks the same language: HTML to a page load, JSON to a script.
        let missing = request_as(row, &format!("{}/_wxgate/no-such-endpoint", w.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404, "{name}");
        let content_type = missing.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let want = if row.decision == "script" {
            "application/json"
        } else {
            "text/html"
        };
        assert!(content_type.starts_with(want), "{name}: {content_type}");
    }
    w.gw.shutdown().await;
}

/// A browser that adds Android WeChat's `X-Requested-With: com.tencent.mm` to every request,
/// as its WebView does.
fn android_wechat() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-requested-with", "com.tencent.mm".parse().unwrap());
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .user_agent(ANDROID_XWEB_UA)
        .default_headers(headers)
        .no_proxy()
        .build()
        .unwrap()
}

const ANDROID_XWEB_UA: &str = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ2A.230505.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 MicroMessenger/8.0.40.2420(0x28002857) WeChat/arm64";

#[tokio::test]
async fn android_wechat_logs_in_on_pages_and_at_start() {
    let w = world().await;
    let b = android_wechat();
    let (hops, last) = follow(&b, &format!("{}/vip/page?x=1", w.origin)).await;
    assert_eq!(last.status(), 200, "{hops:?}");
    assert_eq!(hops.last().unwrap(), "/vip/page?x=1");
    assert_eq!(w.up.last().uri, "/vip/page?x=1");
    assert_eq!(support::wechat::last_identity(&w).scope, "snsapi_userinfo");

    let fresh = android_wechat();
    let start = fresh
        .get(format!("{}/_wxgate/start?rd=%2Fbase%2Fp", w.origin))
        .send()
        .await
        .unwrap();
    assert!(
        authorize_target(start)
            .await
            .contains("/connect/oauth2/authorize?"),
        "/_wxgate/start sends Android WeChat to authorize"
    );
    w.gw.shutdown().await;
}

/// What the hop page's script does: reports `fragment` and goes on.
async fn hop_with_fragment(
    b: &reqwest::Client,
    w: &support::wechat::World,
    page: &str,
    fragment: &str,
) -> Vec<String> {
    let hop = b.get(format!("{}{page}", w.origin)).send().await.unwrap();
    assert_eq!(hop.status(), 200);
    let csp = hop.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'sha256-") && !csp.contains("script-src 'unsafe"),
        "{csp}"
    );
    assert_eq!(hop.headers()["cache-control"], "no-store");
    let html = hop.text().await.unwrap();
    let report = html
        .split("data-fragment=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let encoded: String = url::form_urlencoded::byte_serialize(fragment.as_bytes()).collect();
    let (hops, last) = follow(b, &format!("{}{report}&hash={encoded}", w.origin)).await;
    assert!(last.status().is_success(), "{hops:?}");
    hops
}

#[tokio::test]
async fn hash_routes_survive_the_login_for_both_scopes_and_an_upgrade() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let hops = hop_with_fragment(&b, &w, "/base/index.html?q=1", "/lottery/42").await;
    assert_eq!(hops.last().unwrap(), "/base/index.html?q=1#/lottery/42");
    assert_eq!(w.up.last().uri, "/base/index.html?q=1");
    // The same browser, now on snsapi_base, opens a profile page: an upgrade.
    let hops = hop_with_fragment(&b, &w, "/vip/app/?from=timeline", "/prize?id=7&x=a b").await;
    assert!(
        hops.iter().any(|h| h.contains("scope=snsapi_userinfo")),
        "{hops:?}"
    );
    assert_eq!(
        hops.last().unwrap(),
        "/vip/app/?from=timeline#/prize?id=7&x=a%20b"
    );
    assert_eq!(support::wechat::last_identity(&w).scope, "snsapi_userinfo");

    // A page without a fragment ends on its URL, not on WeChat's `#wechat_redirect`.
    let other = browser(WECHAT_UA);
    let hops = hop_with_fragment(&other, &w, "/vip/plain", "").await;
    assert_eq!(hops.last().unwrap(), "/vip/plain#");

    // A fragment is only ever a fragment: it cannot lead anywhere else.
    for hostile in [
        "//evil.example/x",
        "\"><script>",
        "@evil.example",
        "\r\nSet-Cookie: x=1",
    ] {
        let b = browser(WECHAT_UA);
        let hops = hop_with_fragment(&b, &w, "/base/h", hostile).await;
        let landed = hops.last().unwrap();
        assert!(landed.starts_with("/base/h#"), "{landed}");
        assert!(
            !landed[1..].contains(['"', '<', '\r', '\n', ' ']),
            "{landed}"
        );
        let url = reqwest::Url::parse(&w.origin)
            .unwrap()
            .join(landed)
            .unwrap();
        assert_eq!(
            url.origin(),
            reqwest::Url::parse(&w.origin).unwrap().origin()
        );
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn without_javascript_the_login_still_lands_on_the_page() {
    let w = world().await;
    // `follow` reads the hop page as a browser without scripts: its <noscript> refresh.
    let Login {
        hops,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/nojs?a=1").await;
    assert_eq!(last.status(), 200, "{hops:?}");
    assert!(hops[0].contains("/connect/oauth2/authorize?"), "{hops:?}");
    assert_eq!(hops.last().unwrap(), "/vip/nojs?a=1");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_fragment_report_without_the_login_cookie_starts_nothing() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let hop = b.get(format!("{}/base/x", w.origin)).send().await.unwrap();
    let html = hop.text().await.unwrap();
    let report = html
        .split("data-fragment=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let stranger = browser(WECHAT_UA);
    let answer = stranger
        .get(format!("{}{report}&hash=%2Fa", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("登录已失效"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn scripts_and_start_never_ask_for_more_than_the_route_needs() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    for (path, scope) in [
        ("/base/api", "snsapi_base"),
        ("/vip/api", "snsapi_userinfo"),
    ] {
        let xhr = b
            .get(format!("{}{path}", w.origin))
            .header("x-requested-with", "XMLHttpRequest")
            .header("referer", format!("{}/base/page", w.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(xhr.status(), 401);
        let body: serde_json::Value = xhr.json().await.unwrap();
        let login_url = body["login_url"].as_str().unwrap();
        assert!(login_url.contains(&format!("scope={scope}")), "{login_url}");
        let start = b
            .get(format!("{}{login_url}", w.origin))
            .send()
            .await
            .unwrap();
        let target = authorize_target(start).await;
        assert!(target.contains(&format!("&scope={scope}&")), "{target}");
    }
    let start = b
        .get(format!("{}/_wxgate/start?rd=%2Fbase%2Fp", w.origin))
        .send()
        .await
        .unwrap();
    let target = authorize_target(start).await;
    assert!(
        target.contains("&scope=snsapi_base&"),
        "no scope means snsapi_base: {target}"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn snapshot_visitors_are_marked_and_their_virtual_unionid_is_not_a_unionid() {
    let w = support::wechat::world_with(|mock, _| mock.faults.snapshot = true).await;
    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/page").await;
    assert_eq!(last.status(), 200);
    let seen = w.up.last();
    assert_eq!(seen.headers["x-wechat-snapshot"], "1");
    assert!(seen.headers.get("x-wechat-unionid").is_none());
    let claims = support::wechat::last_identity(&w);
    assert_eq!(claims.snapshot, Some(true));
    assert_eq!(claims.unionid, None);
    assert!(claims.snapshot_unionid.is_some());
    w.gw.shutdown().await;

    // A real visitor carries neither mark, and keeps the unionid.
    let w = world().await;
    follow(&b, &format!("{}/vip/page", w.origin)).await;
    let seen = w.up.last();
    assert!(seen.headers.get("x-wechat-snapshot").is_none());
    assert!(seen.headers.get("x-wechat-unionid").is_some());
    assert!(support::wechat::last_identity(&w).unionid.is_some());
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_prefetch_without_cookies_burns_no_code() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let callback = until_callback(&b, &w.origin, "/base/p?x=1").await.callback;
    let prefetch = browser(WECHAT_UA).get(&callback).send().await.unwrap();
    assert_eq!(prefetch.status(), 400);
    assert_eq!(mock_stats(w.mock).await["/sns/oauth2/access_token"], 0);
    let real = b.get(&callback).send().await.unwrap();
    assert_eq!(real.status(), 302);
    assert_eq!(real.headers()["location"], "/base/p?x=1");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn the_mock_turns_a_browser_outside_wechat_away_as_wechat_does() {
    let w = world().await;
    let hop = browser(WECHAT_UA)
        .get(format!("{}/base/x", w.origin))
        .send()
        .await
        .unwrap();
    let authorize = authorize_target(hop).await;
    // The same authorize link, opened in a desktop browser.
    let desktop = browser(DESKTOP_UA).get(&authorize).send().await.unwrap();
    assert_eq!(desktop.status(), 200);
    assert!(
        desktop
            .text()
            .await
            .unwrap()
            .contains("请在微信客户端打开链接"),
        "WeChat's page for other browsers"
    );
    assert_eq!(mock_stats(w.mock).await["codes_issued"], 0);
    // `wxgate mock-wechat --any-browser` lets it through.
    set_mock_faults(w.mock, serde_json::json!({"require_wechat_ua": false})).await;
    let through = browser(DESKTOP_UA).get(&authorize).send().await.unwrap();
    assert_eq!(through.status(), 302);
    assert_eq!(mock_stats(w.mock).await["codes_issued"], 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn with_wechat_prefetching_every_callback_each_login_lands_with_one_exchange() {
    // `mock-wechat --prefetch`: before the browser hears of its code, the mock loads the
    // callback itself with it, without cookies. A gateway that took that load for the
    // login would spend the code and fail the visitor's own load with 40163.
    let w = world_with(|mock, _| mock.faults.prefetch = true).await;
    for (n, path) in ["/base/a?x=1", "/vip/b"].into_iter().enumerate() {
        let Login {
            hops,
            landing: last,
            ..
        } = log_in(&w.origin, path).await;
        assert_eq!(last.status(), 200, "{path}: {hops:?}");
        assert_eq!(hops.last().unwrap(), path);
        let stats = mock_stats(w.mock).await;
        assert_eq!(stats["prefetches"], n + 1, "{stats}");
        assert_eq!(stats["/sns/oauth2/access_token"], n + 1, "{stats}");
        assert_eq!(stats["codes_exchanged"], n + 1, "{stats}");
    }
    assert_eq!(support::wechat::last_identity(&w).scope, "snsapi_userinfo");
    // The prefetches did reach the gateway, which refused them: no state cookie.
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_logins_failed_total{reason=\"state\"} 2"),
        "{metrics}"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn the_double_load_page_of_the_mock_lands_both_loads_with_one_exchange() {
    // `mock-wechat --double-load concurrent`: the mock's answer loads the callback in the
    // background and, at the same moment, in the page. Both loads are made here as the
    // browser makes them, at once.
    let w = world_with(|mock, _| {
        mock.faults.double_load = wxgate::mock::DoubleLoad::Concurrent;
    })
    .await;
    let (b, _) = browser_with_jar(WECHAT_UA);
    let hop = b
        .get(format!("{}/vip/page?q=1", w.origin))
        .send()
        .await
        .unwrap();
    let authorize = authorize_target(hop).await;
    let page = b.get(&authorize).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let callback = double_load_target(&html);
    assert!(html.contains("first; go();"), "{html}");
    let (first, second) = tokio::join!(b.get(&callback).send(), b.get(&callback).send());
    for load in [first.unwrap(), second.unwrap()] {
        assert_eq!(load.status(), 302);
        assert_eq!(load.headers()["location"], "/vip/page?q=1");
    }
    let stats = mock_stats(w.mock).await;
    assert_eq!(stats["/sns/oauth2/access_token"], 1, "{stats}");
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_callback_repeats_total{result=\"settled\"} 1"),
        "{metrics}"
    );
    let landed = b
        .get(format!("{}/vip/page?q=1", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(landed.status(), 200, "the session the two loads share");

    // Sequential: the background load first, then the page's.
    set_mock_faults(w.mock, serde_json::json!({"double_load": "sequential"})).await;
    let (b, _) = browser_with_jar(WECHAT_UA);
    let hop = b
        .get(format!("{}/base/two", w.origin))
        .send()
        .await
        .unwrap();
    let html = b
        .get(authorize_target(hop).await)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("first.then(go, go);"), "{html}");
    let callback = double_load_target(&html);
    for _ in 0..2 {
        let load = b.get(&callback).send().await.unwrap();
        assert_eq!(load.status(), 302);
        assert_eq!(load.headers()["location"], "/base/two");
    }
    assert_eq!(mock_stats(w.mock).await["/sns/oauth2/access_token"], 2);
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_callback_repeats_total{result=\"settled\"} 2"),
        "the later load, after the first cleared the state cookie, counts too: {metrics}"
    );
    w.gw.shutdown().await;
}

/// The callback URL the mock's double-load page loads (its `<noscript>` refresh target).
fn double_load_target(html: &str) -> String {
    let start = html.find("content=\"0;url=").expect("a refresh") + "content=\"0;url=".len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

#[tokio::test]
async fn escaped_and_cut_emoji_nicknames_log_in() {
    // `mock-wechat --escapes ascii`: every non-ASCII character as a \u escape, emoji as
    // surrogate pairs; `cut-emoji`: each emoji cut to its high surrogate.
    for (escapes, nickname) in [
        ("ascii", "韩梅梅🌸😀"),
        ("cut-emoji", "韩梅梅\u{FFFD}\u{FFFD}"),
    ] {
        let w = world().await;
        set_mock_faults(w.mock, serde_json::json!({"escapes": escapes})).await;
        let (b, jar) = browser_with_jar(WECHAT_UA);
        let mock_url = url::Url::parse(&format!("http://{}/", w.mock)).unwrap();
        jar.add_cookie_str("mock_user=hanmeimei", &mock_url);
        let Login {
            hops,
            landing: last,
            ..
        } = log_in_with((b, jar), &w.origin, "/vip/index.html").await;
        assert_eq!(last.status(), 200, "{escapes}: {hops:?}");
        assert_eq!(
            support::wechat::last_identity(&w).nickname.as_deref(),
            Some(nickname),
            "{escapes}"
        );
        w.gw.shutdown().await;
    }
}

/// The openid a refusal page shows, for the visitor to send to the operator.
fn openid_on_refusal_page(html: &str) -> String {
    let start = html
        .find("id=\"openid\"")
        .expect("the page shows the openid");
    let after = &html[start..];
    let open = after.find('>').unwrap() + 1;
    let close = after.find("</code>").unwrap();
    after[open..close].to_owned()
}

/// The default mock user's identifiers, as the mock's control API lists them.
async fn default_user(mock: std::net::SocketAddr) -> serde_json::Value {
    let users: Vec<serde_json::Value> = reqwest::get(format!("http://{mock}/_mock/users"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    users
        .into_iter()
        .find(|u| u["default"] == true)
        .expect("a default user")
}

fn index_of(config: &wxgate::config::Config, path: &str) -> usize {
    config.routes.iter().position(|r| r.path == path).unwrap()
}

#[tokio::test]
async fn a_visitor_off_the_list_sees_their_openid_and_gets_in_once_listed() {
    let mut config = None;
    let w = support::wechat::world_with(|_, c| {
        let i = index_of(c, "/base/");
        c.routes[i].access = Some(wxgate::config::AccessConfig {
            openids: vec!["oSomebodyElse00000000000000".into()],
            ..Default::default()
        });
        config = Some(c.clone());
    })
    .await;
    let mut config = config.unwrap();
    let Login {
        browser: b,
        hops,
        landing: refused,
        ..
    } = log_in(&w.origin, "/base/report.html").await;
    assert_eq!(refused.status(), 403, "{hops:?}");
    let page = refused.text().await.unwrap();
    let openid = openid_on_refusal_page(&page);
    assert_eq!(openid, default_user(w.mock).await["openid"]);
    assert!(page.contains("无访问权限"), "{page}");
    assert!(
        w.up.seen().iter().all(|s| !s.uri.starts_with("/base/")),
        "nothing of the refused visitor reaches the upstream"
    );
    // A script on the page gets the same answer as JSON.
    let json = b
        .get(format!("{}/base/api/data", w.origin))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 403);
    let body: serde_json::Value = json.json().await.unwrap();
    assert_eq!(body["error"], "not_admitted");
    assert_eq!(body["openid"], openid.as_str());
    // Other protected routes have no list: the same visitor is welcome there.
    let (_, vip) = follow(&b, &format!("{}/vip/x", w.origin)).await;
    assert_eq!(vip.status(), 200);

    // The operator adds the id; after a reload the visitor gets in, session and all.
    let i = index_of(&config, "/base/");
    config.routes[i]
        .access
        .as_mut()
        .unwrap()
        .openids
        .push(openid.clone());
    w.gw.reload(config).unwrap();
    let (hops, admitted) = follow(&b, &format!("{}/base/report.html", w.origin)).await;
    assert_eq!(admitted.status(), 200, "{hops:?}");
    assert!(hops.is_empty(), "the session is kept: {hops:?}");
    let seen = w.up.last();
    assert_eq!(seen.uri, "/base/report.html");
    assert_eq!(
        verify_identity(seen.headers["x-wechat-identity"].to_str().unwrap()).openid,
        openid
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn an_access_file_lists_unionids_and_is_read_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("admins.txt");
    std::fs::write(&list, "# nobody yet\n").unwrap();
    let mut config = None;
    let file = list.clone();
    let w = support::wechat::world_with(|_, c| {
        // The app's list: every protected route without a list of its own.
        c.wechat.access = Some(wxgate::config::AccessConfig {
            unionids_file: Some(file),
            ..Default::default()
        });
        config = Some(c.clone());
    })
    .await;
    let config = config.unwrap();
    let b = browser(WECHAT_UA);
    for page in ["/base/a", "/vip/b"] {
        let (_, refused) = follow(&b, &format!("{}{page}", w.origin)).await;
        assert_eq!(refused.status(), 403, "{page}");
    }
    assert_eq!(w.up.count(), 0, "nothing reached the upstream");
    // Public routes need no list.
    assert_eq!(
        b.get(format!("{}/open", w.origin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let user = default_user(w.mock).await;
    let unionid = user["unionid"].as_str().unwrap();
    std::fs::write(&list, format!("# admins\n{unionid}  # Li Lei\n")).unwrap();
    // Unchanged configuration, changed file: the reload reads it again.
    w.gw.reload(config.clone()).unwrap();
    for page in ["/base/a", "/vip/b"] {
        let (hops, admitted) = follow(&b, &format!("{}{page}", w.origin)).await;
        assert_eq!(admitted.status(), 200, "{page}: {hops:?}");
    }
    assert_eq!(support::wechat::last_identity(&w).openid, user["openid"]);

    // A line that is not an id refuses the reload with the key, the file and the line named,
    // and the running list keeps serving.
    std::fs::write(&list, format!("{unionid}\nLi Lei, 13800000000\n")).unwrap();
    let err = w.gw.reload(config).unwrap_err().to_string();
    assert!(err.contains("wechat.access.unionids_file"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("admins.txt"), "{err}");
    let (_, still) = follow(&b, &format!("{}/base/a", w.origin)).await;
    assert_eq!(still.status(), 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_list_on_a_non_wechat_anonymous_route_lets_no_anonymous_visitor_through() {
    let w = support::wechat::world_with(|_, c| {
        let i = index_of(c, "/anon/");
        c.routes[i].access = Some(wxgate::config::AccessConfig {
            openids: vec!["oSomebody000000000000000000".into()],
            ..Default::default()
        });
    })
    .await;
    let b = browser(DESKTOP_UA);
    let resp = b.get(format!("{}/anon/x", w.origin)).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(w.up.count(), 0);
    w.gw.shutdown().await;
}

#[test]
fn a_list_on_a_public_route_or_a_missing_file_is_a_configuration_error() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut config = support::config_with_routes(&[("/", up)]);
    config.routes[0].access = Some(wxgate::config::AccessConfig {
        openids_file: Some("/nonexistent/wxgate-admins.txt".into()),
        ..Default::default()
    });
    let text: Vec<String> = wxgate::config::validate(&config)
        .iter()
        .map(ToString::to_string)
        .collect();
    let text = text.join("\n");
    assert!(
        text.contains("routes[0].access.openids_file: the list file /nonexistent/wxgate-admins.txt cannot be read"),
        "{text}"
    );
    assert!(text.contains("routes[0].access: a public route"), "{text}");
}
