//! The gateway as a plain reverse proxy on public routes: what the client sends reaches the
//! upstream intact, and what the upstream answers reaches the client intact.

use crate::support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use support::upstream::Upstream;

async fn gateway_in_front(upstream: &Upstream) -> wxgate::server::Running {
    support::start(&support::config_with_routes(&[("/", upstream.addr)])).await
}

#[tokio::test]
async fn multi_megabyte_post_body_arrives_intact() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let want = hex::encode(Sha256::digest(&body));
    let resp = support::client()
        .post(support::url(&gw, "/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_len, 5 * 1024 * 1024);
    assert_eq!(seen.body_sha256, want);
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_request_body_is_streamed_through() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|i| Ok(vec![i as u8; 16 * 1024])).collect();
    let all: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.as_ref().unwrap().clone())
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = support::client()
        .put(support::url(&gw, "/chunks"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.body_len, all.len());
    assert_eq!(seen.body_sha256, hex::encode(Sha256::digest(&all)));
    gw.shutdown().await;
}

#[tokio::test]
async fn thirty_two_mib_response_streams_back_whole() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let n = 32 * 1024 * 1024;
    let mut resp = support::get(&gw, &format!("/big/{n}")).await;
    assert_eq!(resp.status(), 200);
    let mut total = 0usize;
    let mut first_chunk_at = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        first_chunk_at.get_or_insert(total);
        total += chunk.len();
    }
    assert_eq!(total, n);
    gw.shutdown().await;
}

#[tokio::test]
async fn status_codes_pass_through() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    for code in [200u16, 201, 204, 301, 400, 403, 404, 418, 500, 503] {
        let resp = support::get(&gw, &format!("/status/{code}")).await;
        assert_eq!(resp.status().as_u16(), code);
        if code != 204 {
            assert_eq!(
                resp.headers()["x-upstream-status"],
                code.to_string().as_str()
            );
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn query_string_is_forwarded_byte_for_byte() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let queries = [
        "from=singlemessage&isappinstalled=0",
        "a=%E4%B8%AD%E6%96%87&b=%2F%2f&c=+&d=%20",
        "redirect=https%3A%2F%2Fm.example.com%2Fx%3Fy%3D1",
        "empty=&&dup=1&dup=2",
        "UPPER=%3d%3D",
    ];
    for q in queries {
        let resp = support::get(&gw, &format!("/page.html?{q}")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(up.last().uri, format!("/page.html?{q}"));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let request = "GET /echo HTTP/1.1\r\nHost: m.example.com\r\nConnection: keep-alive, X-Client-Private\r\n\
        X-Client-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        TE: gzip\r\nX-Kept: yes\r\n\r\n";
    let answer = support::raw(gw.addr, request.as_bytes(), Duration::from_millis(500)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    for gone in [
        "x-client-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-kept"], "yes");

    let resp = support::get(&gw, "/hop").await;
    assert!(!resp.headers().contains_key("x-upstream-private"));
    assert!(!resp.headers().contains_key("keep-alive"));
    assert_eq!(resp.headers()["x-upstream-public"], "fine");
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarded_headers_are_set_by_the_gateway() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let resp = support::client()
        .get(support::url(&gw, "/echo"))
        .header("host", "m.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    // The test client is not a trusted proxy: its claims are replaced, not extended.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "m.example.com");
    assert_eq!(seen.headers["host"], "m.example.com");
    gw.shutdown().await;
}

#[tokio::test]
async fn trusted_proxies_extend_x_forwarded_for() {
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gw = support::start(&config).await;
    support::client()
        .get(support::url(&gw, "/echo"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    gw.shutdown().await;
}

#[tokio::test]
async fn trailers_are_preserved() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let request = "GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n";
    let answer = support::raw(gw.addr, request.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("part one,"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-checksum: abc123"),
        "trailer lost: {answer}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_echoes_through_the_gateway() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["你好", "second message", &"x".repeat(100_000)] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(support::url(&gw, "/echo?x=1")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().uri, "/echo?x=1");
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_upgrade_requests_are_refused() {
    let up = Upstream::start().await;
    let gw = gateway_in_front(&up).await;
    let request = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
        HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let answer = support::raw(gw.addr, request.as_bytes(), Duration::from_millis(500)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn most_specific_route_wins_over_the_wire() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let c = Upstream::start().await;
    let mut config = support::config_with_routes(&[
        ("/activity/2019/", c.addr),
        ("/", a.addr),
        ("/activity", b.addr),
    ]);
    config.routes.push(wxgate::config::RouteConfig {
        host: Some("m.example.com".into()),
        ..support::route("/", c.addr, wxgate::config::Scope::Public)
    });
    let gw = support::start(&config).await;
    let get = |path: &'static str, host: &'static str| {
        let url = support::url(&gw, path);
        async move {
            support::client()
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get("/activity/x.html", "other").await, 200);
    assert_eq!((a.count(), b.count(), c.count()), (0, 1, 0));
    assert_eq!(get("/activityx", "other").await, 200);
    assert_eq!((a.count(), b.count(), c.count()), (1, 1, 0));
    assert_eq!(get("/activity/2019/a", "other").await, 200);
    assert_eq!((a.count(), b.count(), c.count()), (1, 1, 1));
    assert_eq!(get("/activity/x", "M.Example.com:8080").await, 200);
    assert_eq!((a.count(), b.count(), c.count()), (1, 1, 2));
    gw.shutdown().await;
}

#[tokio::test]
async fn dot_segments_are_resolved_before_matching_and_forwarding() {
    let public = Upstream::start().await;
    let private = Upstream::start().await;
    let config =
        support::config_with_routes(&[("/public/", public.addr), ("/private/", private.addr)]);
    let gw = support::start(&config).await;
    for (raw_path, status, reaches_private) in [
        ("/public/../private/x", 200, true),
        ("/public/%2e%2e/private/x", 200, true),
        ("/public/a/./b", 200, false),
        ("/public/..%2fprivate/x", 400, false),
        ("/public/..;/private/x", 400, false),
        ("/public/%252e%252e/private", 400, false),
        ("/..", 400, false),
    ] {
        let request = format!("GET {raw_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = support::raw(gw.addr, request.as_bytes(), Duration::from_secs(2)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{raw_path}: {answer}"
        );
        if reaches_private {
            // Matched as /private/x and forwarded as /private/x: the same path both times.
            assert_eq!(private.last().uri, "/private/x", "{raw_path}");
        }
    }
    assert_eq!(
        public
            .seen()
            .iter()
            .filter(|s| s.uri.contains("private"))
            .count(),
        0
    );
    assert_eq!(public.last().uri, "/public/a/b");
    gw.shutdown().await;
}
