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
    let b = browser(WECHAT_UA);
    let (hops, refused) = follow(&b, &format!("{}/base/report.html", w.origin)).await;
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
