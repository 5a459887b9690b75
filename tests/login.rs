//! The WeChat login end to end through real sockets: gateway, mock WeChat, and an upstream
//! that records what reached it.

mod support;

use support::wechat::{
    DESKTOP_UA, WECHAT_UA, browser, browser_with_jar, follow, mock_stats, verify_identity, world,
};

#[tokio::test]
async fn base_login_lands_on_the_exact_url_with_a_verified_identity() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let start = format!(
        "{}/base/page.html?from=singlemessage&isappinstalled=0",
        w.origin
    );
    let first = b.get(&start).send().await.unwrap();
    assert_eq!(first.status(), 302);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
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
async fn userinfo_login_carries_the_profile_and_me_shows_it_without_tokens() {
    let w = world().await;
    let b = browser(WECHAT_UA);
    let (_, last) = follow(&b, &format!("{}/vip/index.html", w.origin)).await;
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
    let b = browser(WECHAT_UA);
    follow(&b, &format!("{}/base/x", w.origin)).await;
    let resp = b.get(format!("{}/vip/x", w.origin)).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
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
    let (b, jar) = browser_with_jar(WECHAT_UA);
    follow(&b, &format!("{}/base/x", w.origin)).await;
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
    assert_eq!(
        replay.status(),
        302,
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
