//! Forward-auth: a real nginx in front (Debian's), running the shipped example
//! `deploy/nginx/wxgate-auth-request.conf`, asks wxgate `/_wxgate/auth` for every protected
//! request; the login itself goes through nginx to the gateway and the mock WeChat.

use crate::support;

use support::nginx::{self, Nginx};
use support::wechat::{
    DESKTOP_UA, Login, WECHAT_UA, World, browser, follow, free_port, log_in, verify_identity,
    world_with,
};

/// The deploy example with this test's addresses in place of the documented ones.
fn example_config(w: &World, listen: std::net::SocketAddr) -> String {
    let example = include_str!("../../deploy/nginx/wxgate-auth-request.conf");
    for documented in [
        "127.0.0.1:8080",
        "127.0.0.1:9000",
        "listen 80;",
        "/etc/nginx/",
    ] {
        assert!(
            example.contains(documented),
            "the example still has {documented}"
        );
    }
    example
        .replace("127.0.0.1:8080", &w.gw.addr.to_string())
        .replace("127.0.0.1:9000", &w.up.addr.to_string())
        .replace("listen 80;", &format!("listen {listen};"))
        .replace("/etc/nginx/", "{dir}/")
}

async fn nginx_in_front() -> Option<(World, Nginx)> {
    nginx_in_front_with(|_| {}).await
}

async fn nginx_in_front_with(
    tune: impl FnOnce(&mut wxgate::config::Config),
) -> Option<(World, Nginx)> {
    let binary = nginx::binary()?;
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let w = world_with(|_, config| {
        config.server.public_url = Some(url::Url::parse(&format!("http://{listen}")).unwrap());
        trust_the_proxy(config);
        tune(config);
    })
    .await;
    let include = (
        "wxgate-identity.conf",
        include_str!("../../deploy/nginx/wxgate-identity.conf"),
    );
    let ng = Nginx::start(&binary, listen, &example_config(&w, listen), &[include]).await;
    Some((w, ng))
}

/// The proxy in front sends X-Forwarded-Uri; the gateway believes it from trusted peers only.
fn trust_the_proxy(config: &mut wxgate::config::Config) {
    config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

#[tokio::test]
async fn a_login_through_nginx_reaches_the_app_with_a_verified_identity() {
    let Some((w, ng)) = nginx_in_front().await else {
        return;
    };
    let Login {
        browser: b,
        hops,
        landing: last,
        ..
    } = log_in(
        &ng.origin(),
        "/activity/spring.html?from=singlemessage&isappinstalled=0",
    )
    .await;
    assert_eq!(last.status(), 200, "{hops:?}");
    assert!(
        hops.iter().any(|h| h.contains("scope=snsapi_userinfo")),
        "the /activity/ location asks for the profile: {hops:?}"
    );
    let seen = w.up.last();
    assert_eq!(
        seen.uri,
        "/activity/spring.html?from=singlemessage&isappinstalled=0"
    );
    let claims = verify_identity(seen.headers["x-wechat-identity"].to_str().unwrap());
    assert_eq!(claims.scope, "snsapi_userinfo");
    assert_eq!(seen.headers["x-wechat-openid"], claims.openid.as_str());
    assert!(claims.nickname.is_some());

    // Forged identity headers from the browser never reach the app.
    let forged = b
        .get(format!("{}/activity/next", ng.origin()))
        .header("X-WeChat-Identity", "forged")
        .header("X-WeChat-OpenID", "forged")
        .header("x_wechat_openid", "forged")
        .header("X-WeChat-Snapshot", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    let seen = w.up.last();
    for (name, value) in &seen.headers {
        assert_ne!(value, "forged", "{name} got through nginx");
    }
    assert_eq!(
        verify_identity(seen.headers["x-wechat-identity"].to_str().unwrap()).openid,
        claims.openid
    );

    // Logout through nginx ends it: the next page goes back to WeChat.
    let out = b
        .get(format!("{}/_wxgate/logout?rd=/bye", ng.origin()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    let again = b
        .get(format!("{}/activity/spring.html", ng.origin()))
        .send()
        .await
        .unwrap();
    // nginx's login location for /activity/ keeps its scope: the profile, asked for again.
    let authorize = support::wechat::authorize_target(again).await;
    assert!(
        authorize.contains("/connect/oauth2/authorize?appid=")
            && authorize.contains("&scope=snsapi_userinfo&"),
        "{authorize}"
    );
    // And a base page asks for the openid only.
    let fresh = browser(WECHAT_UA);
    let base = fresh
        .get(format!("{}/index.html", ng.origin()))
        .send()
        .await
        .unwrap();
    let authorize = support::wechat::authorize_target(base).await;
    assert!(authorize.contains("&scope=snsapi_base&"), "{authorize}");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn without_a_session_scripts_get_401_json_desktops_the_qr_page_and_assets_no_identity() {
    let Some((w, ng)) = nginx_in_front().await else {
        return;
    };
    let xhr = browser(WECHAT_UA)
        .get(format!("{}/api/points", ng.origin()))
        .header("X-Requested-With", "XMLHttpRequest")
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

    let desktop = browser(DESKTOP_UA)
        .get(format!("{}/activity/x?id=9", ng.origin()))
        .send()
        .await
        .unwrap();
    assert_eq!(desktop.status(), 200);
    let page = desktop.text().await.unwrap();
    assert!(page.contains("<svg"), "{page:.300}");
    assert!(
        page.contains(&format!("{}/activity/x?id=9", ng.origin()).replace('&', "&amp;"))
            || page.contains(&format!("{}/activity/x?id=9", ng.origin())),
        "the QR code is of the page asked for"
    );
    assert_eq!(w.up.count(), 0, "nothing reached the app without a session");

    let asset = browser(DESKTOP_UA)
        .get(format!("{}/static/app.js", ng.origin()))
        .header("X-WeChat-Identity", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200);
    assert!(!w.up.last().headers.contains_key("x-wechat-identity"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn the_auth_endpoint_answers_200_with_identity_or_401() {
    // Without nginx: the contract Traefik and Caddy rely on too.
    let w = world_with(|_, config| trust_the_proxy(config)).await;
    let b = browser(WECHAT_UA);
    let anonymous = b
        .get(format!("{}/_wxgate/auth", w.origin))
        .header("X-Forwarded-Uri", "/deal?id=1")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(
        body["login_url"],
        "/_wxgate/start?rd=%2Fdeal%3Fid%3D1&scope=snsapi_base"
    );

    // Traefik/Caddy mode: a WeChat navigation is sent to WeChat, back to X-Forwarded-Uri.
    let redirect = b
        .get(format!("{}/_wxgate/auth?redirect=true", w.origin))
        .header("X-Forwarded-Uri", "/deal?id=1")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    let (hops, landed) = follow(&b, redirect.headers()["location"].to_str().unwrap()).await;
    assert_eq!(landed.status(), 200, "{hops:?}");
    assert_eq!(hops.last().unwrap(), "/deal?id=1");

    let granted = b
        .get(format!("{}/_wxgate/auth", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200);
    let claims = verify_identity(granted.headers()["x-wechat-identity"].to_str().unwrap());
    assert_eq!(claims.scope, "snsapi_base");
    assert_eq!(granted.headers()["cache-control"], "no-store");
    let stronger = b
        .get(format!("{}/_wxgate/auth?scope=snsapi_userinfo", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stronger.status(),
        401,
        "a base session is not enough for userinfo"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_uri_from_an_untrusted_peer_is_ignored() {
    let w = world_with(|_, _| {}).await;
    let resp = browser(WECHAT_UA)
        .get(format!("{}/_wxgate/auth", w.origin))
        .header("X-Forwarded-Uri", "/somewhere?else=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["login_url"], "/_wxgate/start?rd=%2F&scope=snsapi_base");
    w.gw.shutdown().await;
}

/// `[wechat.access]` is the list forward-auth answers by: a visitor off it gets 403 with
/// their openid (JSON), one on it 200 with the identity; a reload brings in a new list.
#[tokio::test]
async fn the_auth_endpoint_honours_the_access_list() {
    let mut config = None;
    let w = world_with(|_, c| {
        trust_the_proxy(c);
        c.wechat.access = Some(wxgate::config::AccessConfig {
            openids: vec!["oSomebodyElse00000000000000".into()],
            ..Default::default()
        });
        config = Some(c.clone());
    })
    .await;
    let mut config = config.unwrap();
    let b = browser(WECHAT_UA);
    // Log in (Traefik/Caddy mode sends the WeChat browser through the login).
    let start = b
        .get(format!("{}/_wxgate/auth?redirect=true", w.origin))
        .header("X-Forwarded-Uri", "/deal")
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let _ = follow(&b, start.headers()["location"].to_str().unwrap()).await;
    let refused = b
        .get(format!("{}/_wxgate/auth", w.origin))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(!refused.headers().contains_key("x-wechat-identity"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "not_admitted");
    let openid = body["openid"].as_str().unwrap().to_owned();
    assert_eq!(openid.len(), 28);

    config
        .wechat
        .access
        .as_mut()
        .unwrap()
        .openids
        .push(openid.clone());
    w.gw.reload(config).unwrap();
    let granted = b
        .get(format!("{}/_wxgate/auth", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200);
    let claims = verify_identity(granted.headers()["x-wechat-identity"].to_str().unwrap());
    assert_eq!(claims.openid, openid);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn through_nginx_a_visitor_off_the_list_never_reaches_the_app() {
    let Some((w, ng)) = nginx_in_front_with(|c| {
        c.wechat.access = Some(wxgate::config::AccessConfig {
            openids: vec!["oSomebodyElse00000000000000".into()],
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    let Login {
        hops,
        landing: last,
        ..
    } = log_in(&ng.origin(), "/activity/spring.html").await;
    assert!(
        hops.iter().any(|h| h.contains("/connect/oauth2/authorize")),
        "the visitor logged in: {hops:?}"
    );
    assert_eq!(last.status(), 403, "{hops:?}");
    assert_eq!(w.up.count(), 0, "nothing reached the app");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn forward_auth_needs_no_routes_of_its_own() {
    // As the README promises: public_url and wechat.appid, no [[routes]]; the proxy in front
    // owns the routing. The world's start validates the configuration first.
    let w = world_with(|_, config| {
        config.routes.clear();
        trust_the_proxy(config);
    })
    .await;
    let b = browser(WECHAT_UA);
    let redirect = b
        .get(format!("{}/_wxgate/auth?redirect=true", w.origin))
        .header("X-Forwarded-Uri", "/deal?id=7")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    let (hops, _proxy_would_serve_this) =
        follow(&b, redirect.headers()["location"].to_str().unwrap()).await;
    assert_eq!(hops.last().unwrap(), "/deal?id=7", "{hops:?}");
    let granted = b
        .get(format!("{}/_wxgate/auth", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200);
    let claims = verify_identity(granted.headers()["x-wechat-identity"].to_str().unwrap());
    assert_eq!(claims.scope, "snsapi_base");
    w.gw.shutdown().await;
}
