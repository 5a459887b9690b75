//! The gateway's keep-alive connections to upstreams: reused after every kind of response
//! body, never reused after a body cut short, dropped past `upstream.pool_idle_timeout`, and
//! never used once the upstream has closed them. Requests without a body go over the
//! gateway's own HTTP/1.1 client, so its framing is tested here byte by byte: chunked bodies
//! in pieces, trailers, interim responses, bodies that end at close, malformed heads. The
//! upstream here is a raw TCP server that counts its connections and answers each request
//! from its path.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wxgate::config::Config;

/// An HTTP/1.1 upstream that counts the connections it accepted and the requests it read.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, r.clone()));
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Answers requests on one connection until the peer closes it or a path says to stop.
async fn serve(stream: TcpStream, requests: Arc<AtomicUsize>) {
    // Each write its own segment, so a response written in pieces arrives in pieces.
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    // Set by `/drop-next`: the next request on this connection is read, then the connection
    // closes without an answer, as when an upstream's idle timeout races a request.
    let mut drop_next = false;
    loop {
        let mut head = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        let mut body = vec![0; content_length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        if drop_next {
            return;
        }
        let saw_length = head
            .iter()
            .any(|line| line.to_ascii_lowercase().starts_with("content-length:"));
        let request_line = head.first().cloned().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let answer: &[u8] = match (method, path) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            (_, "/length") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            (_, "/chunked") => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            }
            (_, "/empty") => b"HTTP/1.1 204 No Content\r\n\r\n",
            (_, "/not-modified") => b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n",
            (_, "/then-close") => {
                // Keep-alive as far as the gateway can tell, then closed: as an upstream
                // does when its own idle timeout ends a pooled connection.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                return;
            }
            (_, "/stall") => {
                // Promises 1000 bytes, sends 7, then waits for the gateway to give up on it.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                    .await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                return;
            }
            (_, "/saw-length") if saw_length => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhad-a-length"
            }
            (_, "/saw-length") => b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nno-length",
            (_, "/drop-next") => {
                drop_next = true;
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            (_, "/trickle") => {
                // A chunked body with a chunk extension and a trailer, a byte at a time.
                let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                    Trailer: x-sum\r\n\r\n5;name=value\r\nhello\r\n7\r\n, world\r\n\
                    0\r\nx-sum: 12\r\n\r\n";
                for byte in answer {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
            (_, "/interim") => {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
            }
            (_, "/until-close") => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\n\r\nthe body ends when the connection does")
                    .await;
                return;
            }
            (_, "/http10") => b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!",
            (_, "/http10-keep-alive") => {
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nold!"
            }
            (_, "/two-lengths") => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello"
            }
            (_, "/switch") => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n",
            (_, "/garbage") => b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            (_, "/huge-head") => {
                let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..1000 {
                    answer.extend_from_slice(
                        format!("x-filler-{i}: {}\r\n", "y".repeat(60)).as_bytes(),
                    );
                }
                answer.extend_from_slice(b"Content-Length: 0\r\n\r\n");
                let _ = stream.write_all(&answer).await;
                continue;
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn config(upstream: &RawUpstream) -> Config {
    let mut config = support::config_with_routes(&[("/", upstream.addr)]);
    // One worker: every client connection, and so every upstream connection, on one pool
    // shard, whichever connection a request arrives on.
    config.server.workers = 1;
    config
}

/// Sends each (method, path) three rounds over, with `body` or none, and checks each answer's
/// status and body.
async fn expect_answers(
    gw: &wxgate::server::Running,
    body: Option<&'static str>,
    answers: &[(&str, &str, u16, &str)],
) {
    let client = support::client();
    for round in 0..3 {
        for &(method, path, status, expected) in answers {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = client.request(method, support::url(gw, path));
            if let Some(body) = body {
                request = request.body(body);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), status, "{path} in round {round}");
            assert_eq!(
                resp.text().await.unwrap(),
                expected,
                "{path} in round {round}"
            );
        }
    }
}

#[tokio::test]
async fn one_upstream_connection_serves_every_kind_of_response_body() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let answers = [
        ("GET", "/length", 200, "hello"),
        ("GET", "/chunked", 200, "hello"),
        ("GET", "/empty", 204, ""),
        ("GET", "/not-modified", 304, ""),
        ("HEAD", "/length", 200, ""),
        ("POST", "/length", 200, "hello"),
    ];
    expect_answers(&gw, Some("x"), &answers).await;
    assert_eq!(up.requests(), 18);
    assert_eq!(
        up.connections(),
        1,
        "every response, with or without a body, hands its connection back for the next request"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let client = support::client();
    for i in 0..5 {
        let resp = client
            .post(support::url(&gw, "/then-close"))
            .body(format!("request {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
        // Let the gateway read the upstream's close before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.requests(), 5, "each request reached the upstream once");
    assert_eq!(up.connections(), 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_cut_short_does_not_leave_its_connection_in_the_pool() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    // The visitor gives up halfway through the body.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /stall HTTP/1.1\r\nHost: m.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The next visitor must get its own answer, not the rest of the stalled body.
    let resp = support::get(&gw, "/length").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello");
    assert_eq!(up.connections(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_idle_past_pool_idle_timeout_are_replaced() {
    let up = RawUpstream::start().await;
    let mut config = config(&up);
    config.upstream.pool_idle_timeout = Duration::from_millis(200);
    let gw = support::start(&config).await;
    for _ in 0..2 {
        assert_eq!(support::get(&gw, "/length").await.status(), 200);
    }
    assert_eq!(up.connections(), 1, "reused within the idle timeout");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(support::get(&gw, "/length").await.status(), 200);
    assert_eq!(
        up.connections(),
        2,
        "a new connection after the idle timeout"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn pool_max_idle_zero_keeps_no_connection() {
    let up = RawUpstream::start().await;
    let mut config = config(&up);
    config.upstream.pool_max_idle = 0;
    let gw = support::start(&config).await;
    for _ in 0..3 {
        assert_eq!(support::get(&gw, "/length").await.status(), 200);
    }
    assert_eq!(up.connections(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_http_1_0_request_without_host_reaches_the_upstream_with_one() {
    let up = support::upstream::Upstream::start().await;
    let gw = support::start(&support::config_with_routes(&[("/", up.addr)])).await;
    let answer = support::raw(
        gw.addr,
        b"GET /echo HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = up.last();
    assert_eq!(
        seen.headers.get("host").and_then(|v| v.to_str().ok()),
        Some(up.addr.to_string().as_str())
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_without_a_body_reuse_one_connection_through_every_kind_of_response() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let answers = [
        ("GET", "/length", 200, "hello"),
        ("GET", "/chunked", 200, "hello"),
        ("GET", "/trickle", 200, "hello, world"),
        ("GET", "/interim", 200, "final"),
        ("GET", "/http10-keep-alive", 200, "old!"),
        ("GET", "/empty", 204, ""),
        ("GET", "/not-modified", 304, ""),
        ("HEAD", "/length", 200, ""),
        ("DELETE", "/length", 200, "hello"),
        // Some upstreams answer a POST without a length with 411.
        ("POST", "/saw-length", 200, "had-a-length"),
        ("GET", "/saw-length", 200, "no-length"),
    ];
    expect_answers(&gw, None, &answers).await;
    assert_eq!(up.requests(), 33);
    assert_eq!(
        up.connections(),
        1,
        "every response, with or without a body, hands its connection back for the next request"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_in_pieces_keeps_its_trailer() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /trickle HTTP/1.1\r\nHost: m.example.com\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, chunked) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{answer}");
    assert!(head.contains("transfer-encoding: chunked"), "{answer}");
    let (body, trailer) = dechunk(chunked);
    assert_eq!(body, "hello, world");
    assert_eq!(trailer, "x-sum: 12\r\n", "the trailer reaches the client");
    gw.shutdown().await;
}

/// A chunked body's data and its trailer section.
fn dechunk(mut rest: &str) -> (String, String) {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            return (body, after.strip_suffix("\r\n").unwrap().to_owned());
        }
        body.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after chunk data");
    }
}

#[tokio::test]
async fn bodies_that_end_with_their_connection_arrive_whole_and_the_connection_is_not_reused() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let client = support::client();
    for (path, body) in [
        ("/until-close", "the body ends when the connection does"),
        ("/http10", "old!"),
    ] {
        for _ in 0..2 {
            let resp = client.get(support::url(&gw, path)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(resp.text().await.unwrap(), body, "{path}");
        }
    }
    assert_eq!(up.connections(), 4, "one connection per response");
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_answers_are_502_and_their_connection_goes() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let client = support::client();
    for path in ["/two-lengths", "/switch", "/garbage", "/huge-head"] {
        let resp = client.get(support::url(&gw, path)).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{path}");
        let after = client
            .get(support::url(&gw, "/length"))
            .send()
            .await
            .unwrap();
        assert_eq!(after.status(), 200, "after {path}");
        assert_eq!(after.text().await.unwrap(), "hello", "after {path}");
    }
    // The first malformed answer comes on the first connection; each later one on the
    // connection the good request before it left in the pool.
    assert_eq!(
        up.connections(),
        5,
        "each malformed answer's connection closed, each good answer's kept"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_get_the_upstream_drops_on_a_reused_connection_is_sent_again_and_a_post_is_not() {
    let up = RawUpstream::start().await;
    let gw = support::start(&config(&up)).await;
    let client = support::client();
    assert_eq!(support::get(&gw, "/drop-next").await.status(), 200);
    // Read by the upstream on the reused connection, then dropped without an answer.
    let resp = support::get(&gw, "/length").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello");
    assert_eq!(
        up.connections(),
        2,
        "the GET went again, on a new connection"
    );
    assert_eq!(up.requests(), 3);
    assert_eq!(support::get(&gw, "/drop-next").await.status(), 200);
    let post = client
        .post(support::url(&gw, "/length"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502, "a POST is never sent twice");
    assert_eq!(up.requests(), 5, "the POST reached the upstream once");
    assert_eq!(up.connections(), 2);
    gw.shutdown().await;
}
