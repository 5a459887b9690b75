//! Several Official Accounts in one gateway: `[[apps]]` entries, routes that name them, one
//! mock WeChat per account. Each app logs its visitors in on its own, with its own appid in
//! the identity, its own callback and cookie, over the one session store.

use crate::support;

use std::net::SocketAddr;

use support::wechat::{
    Login, WECHAT_UA, World, browser, follow, last_identity, log_in, world_with,
};
use wxgate::config::{AppConfig, Scope};
use wxgate::mock::{MockConfig, MockWeChat};

const APP_B: &str = "wx0000000000b2b2b2";
const SECRET_B: &str = "b2b2c3d4e5f60718293a4b5c6d7e8f90";

async fn second_mock() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = MockConfig {
        appid: APP_B.to_owned(),
        secret: SECRET_B.into(),
        auto_consent: true,
        ..MockConfig::default()
    };
    tokio::spawn(MockWeChat::new(config).serve(listener, std::future::pending()));
    addr
}

async fn two_apps() -> (World, SocketAddr) {
    let mock_b = second_mock().await;
    let w = world_with(|_, config| {
        let up = config.routes[0].upstream.socket_addrs(|| None).unwrap()[0];
        config.apps.push(AppConfig {
            name: "brand-b".to_owned(),
            appid: APP_B.to_owned(),
            secret: SECRET_B.into(),
            authorize_url: Some(
                url::Url::parse(&format!("http://{mock_b}/connect/oauth2/authorize")).unwrap(),
            ),
            api_base: Some(url::Url::parse(&format!("http://{mock_b}")).unwrap()),
            lang: None,
            timeout: None,
            access: None,
        });
        let mut route = support::route("/b/", up, Scope::SnsapiUserinfo);
        route.app = Some("brand-b".to_owned());
        config.routes.push(route);
    })
    .await;
    (w, mock_b)
}

#[tokio::test]
async fn each_app_logs_its_visitors_in_with_its_own_account() {
    let (w, mock_b) = two_apps().await;

    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/a").await;
    assert_eq!(last.status(), 200);
    let a = last_identity(&w);
    assert_eq!(a.appid, wxgate::mock::MockConfig::default().appid);

    // Logged in to [wechat] is not logged in to brand-b: its own authorize, appid, callback.
    let first = b
        .get(format!("{}/b/page?x=1", w.origin))
        .send()
        .await
        .unwrap();
    let location = support::wechat::authorize_target(first).await;
    assert!(
        location.starts_with(&format!(
            "http://{mock_b}/connect/oauth2/authorize?appid={APP_B}&"
        )),
        "{location}"
    );
    assert!(
        location.contains("%2F_wxgate%2Fcallback%2Fbrand-b&"),
        "{location}"
    );
    let (hops, last) = follow(&b, &format!("{}/b/page?x=1", w.origin)).await;
    assert_eq!(last.status(), 200, "{hops:?}");
    assert_eq!(hops.last().unwrap(), "/b/page?x=1");
    let bee = last_identity(&w);
    assert_eq!(bee.appid, APP_B);
    assert_ne!(bee.openid, a.openid, "openids are per Official Account");

    // Both sessions live side by side.
    b.get(format!("{}/vip/again", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(last_identity(&w).appid, a.appid);
    let me: serde_json::Value = b
        .get(format!("{}/_wxgate/me?app=brand-b", w.origin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["appid"], APP_B);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn one_apps_session_cookie_is_no_session_for_another() {
    let (w, _) = two_apps().await;
    let session = log_in(&w.origin, "/vip/a")
        .await
        .cookie("wxgate_session")
        .unwrap();
    let thief = browser(WECHAT_UA);
    let resp = thief
        .get(format!("{}/b/page", w.origin))
        .header("cookie", format!("wxgate_session_brand-b={session}"))
        .send()
        .await
        .unwrap();
    assert!(
        support::wechat::authorize_target(resp)
            .await
            .contains("/connect/oauth2/authorize?"),
        "[wechat]'s session does not open brand-b's pages"
    );
    w.gw.shutdown().await;
}

#[test]
fn a_route_naming_an_unknown_app_is_refused_by_key() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut config = support::config_with_routes(&[("/", up)]);
    let mut route = support::route("/b/", up, Scope::SnsapiBase);
    route.app = Some("nobody".to_owned());
    config.routes.push(route);
    config.apps.push(AppConfig {
        name: "Bad Name".to_owned(),
        ..AppConfig::default()
    });
    let problems: Vec<String> = wxgate::config::validate(&config)
        .iter()
        .map(ToString::to_string)
        .collect();
    let text = problems.join("\n");
    for key in [
        "routes[1].app",
        "apps[0].name",
        "apps[0].appid",
        "apps[0].secret",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
}
