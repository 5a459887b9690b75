//! Reloading without downtime: routes and identity keys change under traffic, requests in
//! flight finish on the old configuration, sessions survive, a bad configuration is refused
//! with the key named and the old one keeps serving — in process and through the real
//! binary's SIGHUP and file watch.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::process::spawn_gateway;
use support::upstream::Upstream;
use support::wechat::{Login, WECHAT_UA, log_in, until_callback, world};
use wxgate::config::{Config, Scope};
use wxgate::identity::{Algorithm, KeySet, KeySource};

/// Who answered: the recording upstreams count what reached each.
async fn upstream_pair() -> (Upstream, Upstream) {
    (Upstream::start().await, Upstream::start().await)
}

#[tokio::test]
async fn routes_change_under_traffic_and_nothing_in_flight_fails() {
    let (old, new) = upstream_pair().await;
    let config = support::config_with_routes(&[("/", old.addr)]);
    let gw = support::start(&config).await;
    let addr = gw.addr;

    // A slow request is inside the old configuration when the reload happens.
    let slow = tokio::spawn(async move {
        let resp = support::client()
            .get(format!("http://{addr}/slow/800"))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    });
    // Steady traffic all along.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let client = support::client();
            while !stop.load(Ordering::Relaxed) {
                let ok = client
                    .get(format!("http://{addr}/page"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The reload comes once traffic flows and the slow request is inside the old upstream:
    // counted, not timed, so a busy machine only makes the test slower.
    let flowing = async {
        while old.seen().iter().filter(|s| s.uri == "/page").count() < 10
            || !old.seen().iter().any(|s| s.uri == "/slow/800")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), flowing)
        .await
        .expect("traffic reaches the old upstream");
    let mut next = config.clone();
    next.routes[0].upstream = url::Url::parse(&format!("http://{}", new.addr)).unwrap();
    gw.reload(next).expect("a valid configuration is taken");
    let reached_new = async {
        while new.count() < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reached_new)
        .await
        .expect("traffic moves to the new upstream");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (status, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow done"));
    assert!(old.seen().iter().any(|s| s.uri == "/slow/800"));
    assert!(
        sent.load(Ordering::Relaxed) >= 15,
        "requests before and after the reload"
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed");
    let before = new.count();
    support::get(&gw, "/after").await;
    assert_eq!(new.count(), before + 1, "the new route serves");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_configuration_is_refused_by_key_and_the_old_one_keeps_serving() {
    let (up, _) = upstream_pair().await;
    let config = support::config_with_routes(&[("/", up.addr)]);
    let gw = support::start(&config).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wxgate.toml");
    std::fs::write(
        &file,
        "[[routes]]\npath = \"/\"\nupstream = \"http://127.0.0.1:1\"\nscope = \"snsapi_everything\"\n",
    )
    .unwrap();
    let refused = gw.reloader().reload_from(&file).unwrap_err().to_string();
    assert!(refused.contains("routes[0].scope"), "{refused}");

    let mut moved = config.clone();
    moved.server.limits.max_body_bytes += 1;
    let refused = gw.reload(moved).unwrap_err().to_string();
    assert!(
        refused.contains("server.limits") && refused.contains("restart"),
        "{refused}"
    );

    assert_eq!(support::get(&gw, "/still").await.status(), 200);
    assert_eq!(up.last().uri, "/still");
    let metrics = support::metrics(&gw).await;
    assert!(
        metrics.contains("wxgate_config_reloads_total{result=\"refused\"} 2"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn sessions_survive_a_reload_and_new_identity_keys_sign_at_once() {
    let w = world().await;
    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/base/in").await;
    assert_eq!(last.status(), 200);

    // The running configuration, rebuilt the way the harness built it, with a new route and
    // a rotated identity secret.
    let mut next: Config = running_config_of(&w);
    next.identity.secret = "rotated-identity-secret-0123456789-abcdefghijkl".into();
    next.routes
        .push(support::route("/new/", w.up.addr, Scope::SnsapiBase));
    w.gw.reload(next).expect("reload");

    let resp = b
        .get(format!("{}/new/page", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "still logged in, on a route that did not exist"
    );
    let token = w.up.last().headers["x-wechat-identity"]
        .to_str()
        .unwrap()
        .to_owned();
    let rotated = KeySet::load(
        &KeySource {
            algorithm: Algorithm::HS256,
            key_file: None,
            secret: Some("rotated-identity-secret-0123456789-abcdefghijkl".into()),
        },
        &[],
    )
    .unwrap();
    rotated
        .verify(&token, "wxgate", "wxgate-upstream")
        .expect("signed with the new key");
    w.gw.shutdown().await;
}

/// A reload that changes something reloadable (a new route), as a file watcher fires on
/// every write.
fn reload_with_a_new_route(w: &support::wechat::World, path: &str) {
    let mut next = running_config_of(w);
    next.routes
        .push(support::route(path, w.up.addr, Scope::SnsapiBase));
    w.gw.reload(next).expect("reload");
}

async fn mock_json(
    w: &support::wechat::World,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let client = reqwest::Client::new();
    let url = format!("http://{}{path}", w.mock);
    let resp = match body {
        Some(body) => client.post(url).json(&body).send().await.unwrap(),
        None => client.get(url).send().await.unwrap(),
    };
    resp.json().await.unwrap_or_default()
}

/// A WeChat browser without a cookie jar: the test carries the state cookie by hand.
fn bare() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(WECHAT_UA)
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_reload_mid_login_forgets_neither_the_login_nor_used_states_nor_limits() {
    let w = support::wechat::world_with(|_, config| {
        config.server.limits.login_rate = 6;
        config.server.limits.login_burst = 2;
    })
    .await;
    mock_json(
        &w,
        "/_mock/faults",
        Some(serde_json::json!({"latency_ms": 300})),
    )
    .await;
    // A login reaches WeChat, comes back, and its first load is exchanging the code when
    // the configuration reloads; the second load comes after the reload.
    let support::wechat::Pending {
        authorize,
        callback,
        state_cookie: state,
    } = until_callback(&bare(), &w.origin, "/base/deal").await;
    let first = {
        let (callback, state) = (callback.clone(), state.clone());
        tokio::spawn(async move { bare().get(callback).header("cookie", state).send().await })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    reload_with_a_new_route(&w, "/one/");
    let second = bare()
        .get(&callback)
        .header("cookie", &state)
        .send()
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 302);
    assert_eq!(
        second.status(),
        302,
        "the pending single flight outlived the reload"
    );
    assert_eq!(second.headers()["location"], "/base/deal");
    let session_of = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .find(|c| c.starts_with("wxgate_session="))
    };
    assert_eq!(session_of(&first), session_of(&second));
    assert_eq!(
        mock_json(&w, "/_mock/stats", None).await["codes_exchanged"],
        1
    );

    // The used state outlives another reload: a fresh code for it, with the copy of the
    // state cookie, is refused before WeChat is asked.
    reload_with_a_new_route(&w, "/two/");
    let again = bare().get(&authorize).send().await.unwrap();
    let fresh = again.headers()["location"].to_str().unwrap().to_owned();
    let replay = bare()
        .get(&fresh)
        .header("cookie", &state)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(
        mock_json(&w, "/_mock/stats", None).await["codes_exchanged"],
        1
    );

    // The replay spent one of the client's two refusals, a forged callback the other; a
    // reload does not give them back.
    let forged = format!(
        "{}/_wxgate/callback?code=x&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        w.origin
    );
    assert_eq!(bare().get(&forged).send().await.unwrap().status(), 400);
    reload_with_a_new_route(&w, "/three/");
    let limited = bare().get(&forged).send().await.unwrap();
    assert_eq!(limited.status(), 429, "limits survive a reload");
    assert!(limited.headers().contains_key("retry-after"));

    // Metrics survive it too.
    let metrics = support::metrics(&w.gw).await;
    assert!(
        metrics.contains("wxgate_config_reloads_total{result=\"ok\"} 3"),
        "{metrics}"
    );
    w.gw.shutdown().await;
}

/// The configuration `world()` starts with, as the reloader holds it.
fn running_config_of(w: &support::wechat::World) -> Config {
    w.gw.reloader().running_config()
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_and_when_its_file_changes() {
    let (old, new) = upstream_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wxgate.toml");
    let write = |upstream: std::net::SocketAddr, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [[routes]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write(old.addr, "");
    let (mut child, addr, _logs) = spawn_gateway(&file);
    reaches(addr, &old, "first").await;

    // A changed file is picked up by itself.
    write(new.addr, "");
    reaches(addr, &new, "watched").await;

    // SIGHUP reloads too; a broken file is refused and the last good one keeps serving.
    write(old.addr, "[bogus]\n");
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    reaches(addr, &new, "kept").await;
    write(old.addr, "");
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    reaches(addr, &old, "hup").await;
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends requests until one reaches `up`; panics after ten seconds.
async fn reaches(addr: std::net::SocketAddr, up: &Upstream, label: &str) {
    let before = up.count();
    for _ in 0..100 {
        let _ = support::client()
            .get(format!("http://{addr}/{label}"))
            .send()
            .await;
        if up.count() > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{label}: never reached the expected upstream");
}

#[tokio::test]
async fn a_renewed_tls_certificate_is_presented_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let issue = |name: &str| {
        let (tls, issued) = support::self_signed(dir.path(), name);
        let root = reqwest::Certificate::from_pem(issued.cert.pem().as_bytes()).unwrap();
        (tls, root)
    };
    let (first, first_root) = issue("first");
    let (second, second_root) = issue("second");
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    config.server.tls = Some(first);
    let gw = support::start(&config).await;
    let trusting = |root: reqwest::Certificate| {
        reqwest::Client::builder()
            .tls_certs_only([root])
            .resolve("localhost", gw.addr)
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/tls", gw.addr.port());
    assert!(trusting(first_root.clone()).get(&url).send().await.is_ok());
    assert!(
        trusting(second_root.clone())
            .get(&url)
            .send()
            .await
            .is_err()
    );

    let mut next = config.clone();
    next.server.tls = Some(second);
    gw.reload(next)
        .expect("reload with the renewed certificate");
    assert_eq!(
        trusting(second_root)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        trusting(first_root).get(&url).send().await.is_err(),
        "new handshakes get the new certificate"
    );

    // A key that does not match its certificate is refused; the renewed one stays.
    let mut broken = gw.reloader().running_config();
    let tls = broken.server.tls.as_mut().unwrap();
    tls.key = dir.path().join("first.key");
    let refused = gw.reload(broken).unwrap_err().to_string();
    assert!(refused.contains("server.tls"), "{refused}");
    gw.shutdown().await;
}
