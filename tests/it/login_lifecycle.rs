//! The login's harder days, end to end through real sockets: profile refresh through the
//! refresh_token, dead grants, snapshot visitors, WeChat failing or hanging, WeChat's double
//! callback load, parallel tabs, stolen codes, and secrets that must never leave the server.

use crate::support;

use std::time::Duration;

use support::wechat::{
    Login, WECHAT_UA, World, browser, follow, last_identity, log_in, mock_stats, until_callback,
    world, world_with,
};
use wxgate::config::Scope;
use wxgate::identity::Algorithm;

const WECOM_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 wxwork/4.1.22 MicroMessenger/7.0.1 Language/zh ColorScheme/Light";

async fn mock_post(w: &World, path: &str, body: serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", w.mock))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}

fn calls(stats: &serde_json::Value, endpoint: &str) -> u64 {
    stats[endpoint].as_u64().unwrap()
}

/// Polls the mock until `done` holds for its stats; panics after ten seconds.
async fn until_mock(w: &World, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..200 {
        if done(&mock_stats(w.mock).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: mock stats {}", mock_stats(w.mock).await);
}

/// A world whose userinfo profiles go stale after one second.
async fn quickly_stale_world() -> World {
    world_with(|_, config| {
        config.session.profile_refresh = Duration::from_secs(1);
        config.wechat.timeout = Duration::from_secs(30);
    })
    .await
}

async fn let_the_profile_go_stale() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn a_stale_profile_is_refreshed_once_through_the_refresh_token() {
    let w = quickly_stale_world().await;
    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/index.html").await;
    assert_eq!(last.status(), 200);
    let login_iat = last_identity(&w).iat;
    let after_login = mock_stats(w.mock).await;
    assert_eq!(calls(&after_login, "/sns/userinfo"), 1);

    // Three hours on WeChat's clock: the access_token is dead there, the gateway must
    // notice (42001), refresh it with the refresh_token and ask userinfo again.
    mock_post(
        &w,
        "/_mock/clock",
        serde_json::json!({"advance_secs": 3 * 3600}),
    )
    .await;
    let_the_profile_go_stale().await;
    let burst = (0..8).map(|i| b.get(format!("{}/vip/page{i}", w.origin)).send());
    for resp in futures_util::future::join_all(burst).await {
        assert_eq!(resp.unwrap().status(), 200, "served while refreshing");
    }
    until_mock(&w, "one refresh", |s| {
        calls(s, "/sns/oauth2/refresh_token") == 1 && calls(s, "/sns/userinfo") == 3
    })
    .await;

    // The refreshed session is stored: a new identity, and no more WeChat calls.
    let settled = mock_stats(w.mock).await;
    for i in 0..5 {
        let r = b
            .get(format!("{}/vip/after{i}", w.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        mock_stats(w.mock).await,
        settled,
        "one refresh per stale profile"
    );
    let refreshed = last_identity(&w);
    assert!(refreshed.iat >= login_iat);
    assert!(refreshed.nickname.is_some());
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_refresh_never_holds_up_the_request_that_noticed() {
    let w = quickly_stale_world().await;
    let Login { browser: b, .. } = log_in(&w.origin, "/vip/index.html").await;
    let_the_profile_go_stale().await;
    // WeChat hangs (the gateway would wait up to 30 s per call): the page still comes.
    mock_post(&w, "/_mock/faults", serde_json::json!({"hang_next": 10})).await;
    let resp = b
        .get(format!("{}/vip/now", w.origin))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered without waiting for WeChat");
    assert_eq!(resp.status(), 200);
    assert!(w.up.last().headers.contains_key("x-wechat-identity"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_dead_refresh_token_sends_the_next_navigation_through_authorize() {
    let w = quickly_stale_world().await;
    let Login { browser: b, .. } = log_in(&w.origin, "/vip/index.html").await;
    // 31 days on WeChat's clock: the refresh_token is dead (42002).
    mock_post(
        &w,
        "/_mock/clock",
        serde_json::json!({"advance_secs": 31 * 86_400}),
    )
    .await;
    let_the_profile_go_stale().await;
    assert_eq!(
        b.get(format!("{}/vip/a", w.origin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    until_mock(&w, "refresh attempted", |s| {
        calls(s, "/sns/oauth2/refresh_token") >= 1
    })
    .await;

    // Poll until the gateway has recorded the dead grant: navigations go to authorize with
    // the session's own scope, even on a snsapi_base route; scripts keep their identity.
    let mut location = String::new();
    for _ in 0..100 {
        let r = b.get(format!("{}/base/b", w.origin)).send().await.unwrap();
        if let (_, Some(target)) = support::wechat::through_hop(r).await {
            location = target;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(location.contains("scope=snsapi_userinfo"), "{location:?}");
    let xhr = b
        .get(format!("{}/vip/api", w.origin))
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 200);
    let (_, last) = follow(&b, &format!("{}/vip/again", w.origin)).await;
    assert_eq!(last.status(), 200, "a fresh login ends the detour");
    assert_eq!(w.up.last().uri, "/vip/again");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn snapshot_visitors_get_a_marked_session_and_strict_routes_refuse_them() {
    // Both ways WeChat reveals a 快照页 visitor: the grant's is_snapshotuser, or userinfo
    // answering 48001.
    for denied_userinfo in [false, true] {
        let w = snapshot_world(denied_userinfo).await;
        let Login {
            browser: b,
            hops,
            landing: last,
            ..
        } = log_in(&w.origin, "/vip/x").await;
        assert_eq!(last.status(), 200, "{hops:?}");
        let claims = last_identity(&w);
        assert_eq!(claims.snapshot, Some(true));
        assert_eq!(claims.nickname, None, "a virtual account has no profile");

        let strict = b.get(format!("{}/full/x", w.origin)).send().await.unwrap();
        assert_eq!(strict.status(), 403);
        assert!(strict.text().await.unwrap().contains("使用完整服务"));
        w.gw.shutdown().await;
    }
}

#[tokio::test]
async fn one_busy_answer_from_wechat_is_retried_into_a_successful_login() {
    let w = world_with(|mock, _| {
        mock.faults.fail_next = 1;
        mock.faults.fail_errcode = -1;
    })
    .await;
    let Login {
        hops,
        landing: last,
        ..
    } = log_in(&w.origin, "/base/x?y=1").await;
    assert_eq!(last.status(), 200, "{hops:?}");
    assert_eq!(w.up.last().uri, "/base/x?y=1");
    assert_eq!(
        calls(&mock_stats(w.mock).await, "/sns/oauth2/access_token"),
        2
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_hanging_wechat_gets_a_504_page_within_the_timeout_and_the_retry_link_works() {
    let w = world_with(|mock, config| {
        config.wechat.timeout = Duration::from_millis(300);
        mock.faults.hang_next = 5;
    })
    .await;
    let start = format!("{}/base/deal?id=7", w.origin);
    let Login {
        browser: b,
        hops,
        landing: last,
        ..
    } = tokio::time::timeout(
        Duration::from_secs(15),
        log_in(&w.origin, "/base/deal?id=7"),
    )
    .await
    .expect("the gateway answers, it does not hang with WeChat");
    assert_eq!(last.status(), 504, "{hops:?}");
    let page = last.text().await.unwrap();
    assert!(
        page.contains("/base/deal?id=7"),
        "a retry link: {page:.400}"
    );

    mock_post(&w, "/_mock/faults", serde_json::json!({"hang_next": 0})).await;
    let (_, again) = follow(&b, &start).await;
    assert_eq!(again.status(), 200);
    assert_eq!(w.up.last().uri, "/base/deal?id=7");
    w.gw.shutdown().await;
}

fn location(resp: &reqwest::Response) -> &str {
    resp.headers()["location"].to_str().unwrap()
}

#[tokio::test]
async fn the_callback_loaded_twice_lands_on_the_page_both_times() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let callback = until_callback(&b, &w.origin, "/base/p?from=timeline")
        .await
        .callback;
    let first = b.get(&callback).send().await.unwrap();
    assert_eq!(first.status(), 302);
    assert_eq!(location(&first), "/base/p?from=timeline");
    let second = b.get(&callback).send().await.unwrap();
    assert_eq!(second.status(), 302, "WeChat's double load is not an error");
    assert_eq!(location(&second), "/base/p?from=timeline");
    assert_eq!(
        calls(&mock_stats(w.mock).await, "/sns/oauth2/access_token"),
        1,
        "the code is exchanged once"
    );
    w.gw.shutdown().await;
}

/// The session cookie a response sets, if any.
fn session_set(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("wxgate_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .filter(|v| !v.is_empty())
}

#[tokio::test]
async fn concurrent_loads_of_one_callback_land_with_one_exchange_and_one_session() {
    let w = world().await;
    // WeChat takes a while to answer: the second load arrives while the first exchanges.
    mock_post(&w, "/_mock/faults", serde_json::json!({"latency_ms": 300})).await;
    let b = browser(WECHAT_UA);
    let callback = until_callback(&b, &w.origin, "/base/p?from=timeline")
        .await
        .callback;
    let (first, second) = tokio::join!(b.get(&callback).send(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.get(&callback).send().await
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    for (name, load) in [("first", &first), ("second", &second)] {
        assert_eq!(load.status(), 302, "{name} load: never 登录已失效");
        assert_eq!(location(load), "/base/p?from=timeline", "{name} load");
    }
    let (one, two) = (session_set(&first), session_set(&second));
    assert!(one.is_some(), "the first load sets the session");
    assert_eq!(one, two, "both loads hand out the same session");
    assert_eq!(
        calls(&mock_stats(w.mock).await, "codes_exchanged"),
        1,
        "the code is exchanged once"
    );
    // Whichever load the browser kept, the session is live.
    let page = browser(WECHAT_UA)
        .get(format!("{}/base/p", w.origin))
        .header("cookie", format!("wxgate_session={}", two.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_second_load_of_a_failed_callback_shows_the_same_failure_without_a_second_exchange() {
    let w = world().await;
    mock_post(
        &w,
        "/_mock/faults",
        serde_json::json!({"latency_ms": 200, "fail_next": 5, "fail_errcode": -1}),
    )
    .await;
    let b = browser(WECHAT_UA);
    let callback = until_callback(&b, &w.origin, "/base/x").await.callback;
    let (first, second) = tokio::join!(b.get(&callback).send(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.get(&callback).send().await
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.status(), second.status());
    assert_ne!(
        second.status(),
        400,
        "WeChat's fault is not an expired login"
    );
    assert!(second.status().is_server_error(), "{}", second.status());
    w.gw.shutdown().await;
}

#[tokio::test]
async fn parallel_tabs_each_log_in_and_land_on_their_own_page() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let tabs = ["/base/one?t=1", "/vip/two?t=2", "/base/three?t=3"];
    // Every tab reaches WeChat before any comes back.
    let mut callbacks = Vec::new();
    for tab in tabs {
        callbacks.push(until_callback(&b, &w.origin, tab).await.callback);
    }
    for (tab, callback) in tabs.iter().zip(&callbacks) {
        let back = b.get(callback).send().await.unwrap();
        assert_eq!(back.status(), 302, "{tab}");
        assert_eq!(location(&back), *tab);
        let page = b.get(format!("{}{tab}", w.origin)).send().await.unwrap();
        assert_eq!(page.status(), 200, "{tab}");
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_code_carried_to_another_browser_is_never_exchanged() {
    let w = world().await;
    let victim = browser(WECHAT_UA);
    let attacker = browser(WECHAT_UA);
    let callback = until_callback(&victim, &w.origin, "/base/x").await.callback;
    let stolen = attacker.get(&callback).send().await.unwrap();
    assert_eq!(stolen.status(), 400);
    assert!(
        stolen
            .headers()
            .get("set-cookie")
            .is_none_or(|c| { !c.to_str().unwrap().starts_with("wxgate_session=") })
    );
    assert_eq!(mock_stats(w.mock).await["codes_exchanged"], 0);

    // The victim still logs in with it, and a replay after that is refused too.
    assert_eq!(victim.get(&callback).send().await.unwrap().status(), 302);
    assert_eq!(attacker.get(&callback).send().await.unwrap().status(), 400);
    assert_eq!(mock_stats(w.mock).await["codes_exchanged"], 1);
    w.gw.shutdown().await;
}

/// Every code and token the mock has issued.
async fn issued_secrets(w: &World) -> Vec<String> {
    let issued: serde_json::Value = reqwest::get(format!("http://{}/_mock/secrets", w.mock))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ["codes", "access_tokens", "refresh_tokens"]
        .iter()
        .flat_map(|kind| issued[kind].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Loads `url` and the redirects after it, returning where it landed and the gateway's
/// answers (headers and bodies) on the way.
async fn walk(w: &World, b: &reqwest::Client, mut url: String) -> (String, Vec<String>) {
    let mut answers = Vec::new();
    for _ in 0..10 {
        let resp = b.get(&url).send().await.unwrap();
        let mut next = resp.headers().get("location").map(|l| {
            reqwest::Url::parse(&url)
                .unwrap()
                .join(l.to_str().unwrap())
                .unwrap()
        });
        if url.starts_with(&w.origin) {
            let headers = format!("{:?}", resp.headers());
            let text = resp.text().await.unwrap();
            // The hash hop page goes on as a browser without JavaScript does.
            if let Some(target) = wxgate::pages::hop::refresh_target(&text) {
                next = Some(reqwest::Url::parse(&target).unwrap());
            }
            answers.push(format!("{headers}\n{text}"));
        }
        match next {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    (url, answers)
}

#[tokio::test]
async fn wechat_tokens_codes_and_the_appsecret_reach_neither_browser_nor_upstream() {
    let w = quickly_stale_world().await;
    let b = browser(WECHAT_UA);
    let start = format!("{}/vip/start", w.origin);
    let (landed, mut answers) = walk(&w, &b, start.clone()).await;
    assert_eq!(landed, start, "landed without code or state");
    // A refresh too, so refreshed tokens are in play.
    mock_post(
        &w,
        "/_mock/clock",
        serde_json::json!({"advance_secs": 3 * 3600}),
    )
    .await;
    let_the_profile_go_stale().await;
    for path in ["/vip/again", "/_wxgate/me", "/_wxgate/jwks.json"] {
        answers.extend(walk(&w, &b, format!("{}{path}", w.origin)).await.1);
    }
    until_mock(&w, "refreshed", |s| {
        calls(s, "/sns/oauth2/refresh_token") == 1
    })
    .await;
    answers.extend(walk(&w, &b, format!("{}/vip/more", w.origin)).await.1);

    let mut secrets = issued_secrets(&w).await;
    assert!(
        secrets.len() >= 4,
        "a code, two access tokens, a refresh token"
    );
    secrets.push(
        wxgate::mock::MockConfig::default()
            .secret
            .expose()
            .to_owned(),
    );
    let upstream: Vec<String> =
        w.up.seen()
            .iter()
            .map(|seen| format!("{} {:?}", seen.uri, seen.headers))
            .collect();
    assert!(upstream.len() >= 3);
    for secret in &secrets {
        for answer in &answers {
            assert!(
                !answer.contains(secret.as_str()),
                "sent to the browser: {answer}"
            );
        }
        for request in &upstream {
            assert!(
                !request.contains(secret.as_str()),
                "sent upstream: {request}"
            );
        }
    }
    for request in &upstream {
        assert!(
            !request.contains("wxgate_session") && !request.contains("wxgate_state"),
            "the gateway's cookies stay with the gateway: {request}"
        );
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn an_es256_identity_verifies_with_the_published_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("identity.pem");
    std::fs::write(
        &key_file,
        wxgate::identity::generate_pem(Algorithm::ES256).unwrap(),
    )
    .unwrap();
    let w = world_with(|_, config| {
        config.identity.algorithm = Algorithm::ES256;
        config.identity.key_file = Some(key_file.clone());
        config.identity.secret = Default::default();
    })
    .await;
    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/me").await;
    assert_eq!(last.status(), 200);
    let token = w.up.last().headers["x-wechat-identity"]
        .to_str()
        .unwrap()
        .to_owned();
    let jwks = b
        .get(format!("{}/_wxgate/jwks.json", w.origin))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let claims =
        wxgate::identity::verify_with_jwks(&token, &jwks, "wxgate", "wxgate-upstream").unwrap();
    assert_eq!(claims.scope, "snsapi_userinfo");
    assert!(claims.nickname.is_some());
    assert!(
        wxgate::identity::verify_with_jwks(&token, &jwks, "wxgate", "another-app").is_err(),
        "the audience is checked"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn wecom_logs_in_like_wechat_unless_the_operator_turns_it_off() {
    let on = world().await;
    let wecom = browser(WECOM_UA);
    let r = wecom
        .get(format!("{}/base/x", on.origin))
        .send()
        .await
        .unwrap();
    assert!(
        support::wechat::authorize_target(r)
            .await
            .contains("/connect/oauth2/authorize?")
    );
    on.gw.shutdown().await;

    let off = world_with(|_, config| config.wechat.browsers.wecom = false).await;
    let r = wecom
        .get(format!("{}/deny/x", off.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "WeCom now gets the route's non_wechat page"
    );
    let wechat = browser(WECHAT_UA);
    let r = wechat
        .get(format!("{}/deny/x", off.origin))
        .send()
        .await
        .unwrap();
    assert!(
        support::wechat::authorize_target(r)
            .await
            .contains("/connect/oauth2/authorize?"),
        "WeChat itself still logs in"
    );
    off.gw.shutdown().await;
}

#[tokio::test]
async fn refusing_consent_shows_a_page_with_a_way_back_and_no_loop() {
    let w = world_with(|mock, _| {
        mock.faults.deny = true;
        mock.faults.deny_redirect = true;
    })
    .await;
    let Login {
        hops,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/gift?id=3").await;
    assert_eq!(last.status(), 403, "{hops:?}");
    let page = last.text().await.unwrap();
    assert!(page.contains("拒绝授权"), "{page:.300}");
    assert!(page.contains("/vip/gift?id=3"), "a retry link: {page:.400}");
    assert_eq!(mock_stats(w.mock).await["codes_exchanged"], 0);
    assert_eq!(w.up.count(), 0, "nothing reached the upstream");
    w.gw.shutdown().await;
}

/// Issue 18: a 快照页 visitor's script was refused with an HTML page it cannot read. The
/// login's refusals follow the rule of every other answer: JSON for scripts.
#[tokio::test]
async fn a_snapshot_visitors_script_is_refused_in_json() {
    let w = snapshot_world(false).await;
    let Login {
        browser: b,
        hops,
        landing,
        ..
    } = log_in(&w.origin, "/vip/x").await;
    assert_eq!(landing.status(), 200, "{hops:?}");
    let xhr = b
        .get(format!("{}/full/api", w.origin))
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 403);
    assert_eq!(xhr.headers()["content-type"], "application/json");
    let body: serde_json::Value = xhr.json().await.unwrap();
    assert_eq!(body["error"], "snapshot_refused", "{body}");
    // The page load still gets the page that tells the visitor what to tap.
    let page = b.get(format!("{}/full/x", w.origin)).send().await.unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.text().await.unwrap().contains("使用完整服务"));
    w.gw.shutdown().await;
}

/// A world whose mock WeChat makes every visitor a 快照页 visitor (through the grant's
/// is_snapshotuser, or with `denied_userinfo` through userinfo's 48001), with a strict
/// `/full/` route that refuses them.
async fn snapshot_world(denied_userinfo: bool) -> World {
    world_with(|mock, config| {
        mock.faults.snapshot = true;
        mock.faults.snapshot_userinfo_denied = denied_userinfo;
        let up = config.routes[0].upstream.clone();
        let addr = up.socket_addrs(|| None).unwrap()[0];
        let mut strict = support::route("/full/", addr, Scope::SnsapiUserinfo);
        strict.allow_snapshot = false;
        config.routes.push(strict);
    })
    .await
}
