//! Correctness under load: 200 visitors, each a different WeChat user of the mock, log in at
//! the same time and keep browsing, and every request that reaches the upstream carries the
//! identity of exactly the visitor who sent it. Speed is the bench's business (`bench/`);
//! this only counts and compares.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use support::wechat::{WECHAT_UA, World, world_with};
use tokio::sync::Barrier;
use wxgate::config::Scope;

const USERS: usize = 200;
/// Requests each visitor makes after the one its login lands on.
const REQUESTS_AFTER_LOGIN: usize = 5;
const IDENTITY_SECRET: &str = "load-identity-secret-0123456789-abcdefghij";
/// The shared login world (`support::wechat`), with the `/app/` route the visitors browse
/// and no per-client login rate: all 200 visitors come from 127.0.0.1.
async fn world() -> World {
    world_with(|_, config| {
        config.server.limits.login_rate = 0;
        config.identity.secret = wxgate::Secret::new(IDENTITY_SECRET);
        let up = config.routes[0].upstream.socket_addrs(|| None).unwrap()[0];
        config
            .routes
            .push(support::route("/app/", up, Scope::SnsapiUserinfo));
    })
    .await
}

/// Creates mock user `load-N` and returns its openid.
async fn create_user(mock: std::net::SocketAddr, n: usize) -> String {
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{mock}/_mock/users"))
        .body(format!(
            r#"{{"id": "load-{n}", "nickname": "压测用户{n}"}}"#
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["openid"].as_str().unwrap().to_owned()
}

/// One visitor: logs in as `load-N` through the gateway and the mock, then browses.
/// Every URL carries `u=N`, so the upstream knows who sent each request it sees.
async fn visit(origin: String, n: usize, start: Arc<Barrier>) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .user_agent(WECHAT_UA)
        .no_proxy()
        .build()
        .unwrap();
    start.wait().await;
    let mut url = format!("{origin}/app/index.html?u={n}");
    for hop in 0.. {
        assert!(hop < 6, "visitor {n}: redirect loop");
        let response = browser.get(&url).send().await.unwrap();
        // The hash hop page goes on to authorize like a browser without JavaScript.
        let (response, hop) = support::wechat::through_hop(response).await;
        let location = match (response, hop) {
            (_, Some(target)) => target,
            (Some(response), None) if response.status() == 200 => break,
            (Some(response), None) => {
                assert_eq!(response.status(), 302, "visitor {n} at {url}");
                response.headers()["location"].to_str().unwrap().to_owned()
            }
            (None, None) => unreachable!(),
        };
        let mut next = reqwest::Url::parse(&url).unwrap().join(&location).unwrap();
        next.set_fragment(None);
        if next.path() == "/connect/oauth2/authorize" {
            // The user this browser is logged in to "WeChat" as.
            next.query_pairs_mut()
                .append_pair("mock_user", &format!("load-{n}"));
        }
        url = next.to_string();
    }
    for i in 0..REQUESTS_AFTER_LOGIN {
        tokio::task::yield_now().await;
        let response = browser
            .get(format!("{origin}/app/item/{i}?u={n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "visitor {n} request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_request_carries_the_identity_of_the_user_who_sent_it() {
    let w = world().await;
    let mut openids = HashMap::new();
    for n in 0..USERS {
        openids.insert(n, create_user(w.mock, n).await);
    }
    let start = Arc::new(Barrier::new(USERS));
    let visitors: Vec<_> = (0..USERS)
        .map(|n| tokio::spawn(visit(w.origin.clone(), n, start.clone())))
        .collect();
    for visitor in visitors {
        visitor.await.unwrap();
    }

    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["wxgate"]);
    validation.set_audience(&["wxgate-upstream"]);
    let key = DecodingKey::from_secret(IDENTITY_SECRET.as_bytes());
    let seen = w.up.seen();
    assert_eq!(seen.len(), USERS * (1 + REQUESTS_AFTER_LOGIN));
    let mut per_user = HashMap::<usize, usize>::new();
    for request in &seen {
        let n: usize = request
            .uri
            .rsplit_once("u=")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("unattributable request {}", request.uri));
        let token = request.headers["x-wechat-identity"].to_str().unwrap();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .unwrap_or_else(|e| panic!("{}: identity does not verify: {e}", request.uri))
            .claims;
        assert_eq!(
            claims["openid"].as_str(),
            Some(openids[&n].as_str()),
            "{} carried someone else's identity",
            request.uri
        );
        assert_eq!(claims["sub"], claims["openid"]);
        assert_eq!(
            claims["nickname"].as_str(),
            Some(format!("压测用户{n}").as_str())
        );
        *per_user.entry(n).or_default() += 1;
    }
    assert_eq!(per_user.len(), USERS);
    assert!(per_user.values().all(|&c| c == 1 + REQUESTS_AFTER_LOGIN));
    w.gw.shutdown().await;
}
