//! What clients see when something goes wrong: dead or slow upstreams, oversized or
//! malformed requests. Each failure is a clear status, and the gateway keeps serving.

use crate::support;

use std::time::{Duration, Instant};

use support::upstream::Upstream;

#[tokio::test]
async fn dead_upstream_gives_502_page() {
    // Port 1 on loopback: nothing listens there, and unlike a port just freed by a stopped
    // server, no other test can take it meanwhile.
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(
        std::net::TcpStream::connect(dead).is_err(),
        "something listens on 127.0.0.1:1"
    );
    let gw = support::start(&support::config_with_routes(&[("/", dead)])).await;
    let resp = support::get(&gw, "/x").await;
    assert_eq!(resp.status(), 502);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("502") && page.contains("服务暂时不可用"),
        "{page}"
    );

    let json = support::client()
        .get(support::url(&gw, "/x"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 502);
    let body: serde_json::Value = json.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
    gw.shutdown().await;
}

/// A loopback port whose accept queue is full: further SYNs are dropped, so a connect
/// hangs until the client gives up, like an upstream host that has gone dark.
async fn blackhole() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    (listener, held)
}

#[tokio::test]
async fn unreachable_upstream_gives_502_within_the_connect_timeout() {
    let (listener, _held) = blackhole().await;
    let mut config = support::config_with_routes(&[("/", listener.local_addr().unwrap())]);
    config.upstream.connect_timeout = Duration::from_millis(300);
    let gw = support::start(&config).await;
    let started = Instant::now();
    let resp = support::get(&gw, "/").await;
    assert_eq!(resp.status(), 502);
    // Not a speed assertion: the request must end by the connect timeout, not wait for the
    // 60 s upstream timeout.
    assert!(started.elapsed() < Duration::from_secs(30));
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_after_the_route_timeout() {
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    config.routes[0].timeout = Some(Duration::from_millis(300));
    let gw = support::start(&config).await;
    let resp = support::get(&gw, "/slow/3000").await;
    assert_eq!(resp.status(), 504);
    let resp = support::get(&gw, "/slow/10").await;
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_and_serving_goes_on() {
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    config.server.limits.max_uri_bytes = 2048;
    config.server.limits.max_header_bytes = 4096;
    config.server.limits.max_headers = 20;
    config.server.limits.max_body_bytes = 1024 * 1024;
    let gw = support::start(&config).await;
    let wait = Duration::from_secs(2);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..30)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(String, &str)> = vec![
        (long_uri, "414"),
        (big_header, "431"),
        (many_headers, "431"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n".into(),
            "413",
        ),
        ("GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n".into(), "400"),
        ("GET / HTTP/1.1\r\n\r\n".into(), "400"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(),
            "400",
        ),
        ("NOT A REQUEST\r\n\r\n".into(), "400"),
    ];
    for (request, status) in cases {
        let answer = support::raw(gw.addr, request.as_bytes(), wait).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "expected {status} for {:?}: {answer:.200}",
            &request[..request.len().min(60)]
        );
    }
    // A streamed body that grows past the limit without declaring its length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![0u8; 64 * 1024])).collect();
    let resp = support::client()
        .post(support::url(&gw, "/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    assert!(up.seen().iter().all(|s| s.body_len <= 1024 * 1024));
    let resp = support::get(&gw, "/still-serving").await;
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn slowloris_connection_is_closed_after_the_header_timeout() {
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    config.server.limits.header_read_timeout = Duration::from_millis(400);
    let gw = support::start(&config).await;
    // Half a request head, then silence: the gateway must hang up on its own.
    let answer = support::raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let resp = support::get(&gw, "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_without_a_catch_all_route_are_404() {
    let up = Upstream::start().await;
    let gw = support::start(&support::config_with_routes(&[("/activity/", up.addr)])).await;
    let resp = support::get(&gw, "/activityx").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn https_listener_speaks_h2_and_http1_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = support::self_signed(dir.path(), "localhost");
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    config.server.tls = Some(tls);
    let gw = support::start(&config).await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let url = format!("https://localhost:{}/echo", gw.addr.port());
    for (http1_only, want) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([root.clone()])
            .resolve("localhost", gw.addr);
        if http1_only {
            builder = builder.http1_only();
        }
        let resp = builder.build().unwrap().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), want);
    }
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    gw.shutdown().await;
}
