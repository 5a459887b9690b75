//! The gateway's HTTP/1.1 on raw sockets (issue 19): the regression test of each finding, and
//! the differential harness that runs a corpus of raw requests and hostile upstream answers
//! through the gateway with its own HTTP/1.1 on and off (`server.http1_fast_paths`), in front
//! of a recording upstream that sees the bytes as they come.
//!
//! `HTTP1_REPORT=FILE` writes the harness's table (on, off and, where nginx is
//! installed, nginx in front of the same upstream) to FILE; docs/http1.md has it.

use crate::support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client waits for more bytes before it calls the connection hung.
const QUIET: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------
// A recording upstream that reads raw bytes and answers by path, hostile where asked.
// ---------------------------------------------------------------------------------------

/// One request as the upstream read it off its socket.
#[derive(Debug, Clone)]
struct Heard {
    conn: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Heard {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
struct RawUpstream {
    addr: SocketAddr,
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl RawUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((stream, _)) = listener.accept().await {
                conn += 1;
                tokio::spawn(serve_raw(stream, conn, log.clone()));
            }
        });
        RawUpstream { addr, heard }
    }

    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// What reached the upstream with `X-Case: case`.
    fn of_case(&self, case: &str) -> Vec<Heard> {
        self.heard()
            .into_iter()
            .filter(|h| h.header("x-case") == Some(case))
            .collect()
    }
}

/// Reads requests strictly (a request it cannot frame ends the connection) and answers each.
async fn serve_raw(mut stream: TcpStream, conn: usize, heard: Arc<Mutex<Vec<Heard>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf, conn).await else {
            return;
        };
        let answer = answer_for(&request);
        // A body that ends with the connection: the upstream closes it.
        let close = request.method == "CONNECT" || request.target.ends_with("/gzip-te");
        heard.lock().unwrap().push(request);
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Heard> {
    let (len, method, target, headers) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut fields);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    len,
                    parsed.method?.to_owned(),
                    parsed.path?.to_owned(),
                    headers,
                );
            }
            Ok(httparse::Status::Partial) => {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    buf.drain(..len);
    let mut heard = Heard {
        conn,
        method,
        target,
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let chunked = heard
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        read_chunked(stream, buf, &mut heard).await?;
    } else if let Some(length) = heard.header("content-length") {
        let length: usize = length.trim().parse().ok()?;
        while buf.len() < length {
            if !fill(stream, buf).await {
                return None;
            }
        }
        heard.body = buf.drain(..length).collect();
    }
    Some(heard)
}

/// A strict chunked reader: CRLF everywhere, hex sizes, trailers parsed as fields.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>, heard: &mut Heard) -> Option<()> {
    loop {
        let line_end = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if !fill(stream, buf).await {
                return None;
            }
        };
        let line = String::from_utf8(buf[..line_end].to_vec()).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailer section up to an empty line.
            loop {
                let at = loop {
                    if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    if !fill(stream, buf).await {
                        return None;
                    }
                };
                let field = String::from_utf8(buf[..at].to_vec()).ok()?;
                buf.drain(..at + 2);
                if field.is_empty() {
                    return Some(());
                }
                let (name, value) = field.split_once(':')?;
                heard
                    .trailers
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return None;
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        heard.body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// The hostile answers, by the last segment of the path; anything else is echoed with the
/// upstream connection's number, so that an answer that reaches the wrong client shows.
fn answer_for(request: &Heard) -> Vec<u8> {
    let last = request
        .target
        .split('?')
        .next()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("");
    let hostile: Option<&[u8]> = match last {
        "cl-te" => Some(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              7\r\nchunked\r\n0\r\n\r\n",
        ),
        "te-cl" => Some(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n\
              7\r\nchunked\r\n0\r\n\r\n",
        ),
        "two-lengths" => {
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 7\r\n\r\nchunked")
        }
        "long-body" => Some(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n\
              Content-Length: 8\r\n\r\npoisoned",
        ),
        "trailer-cookie" => Some(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
              Trailer: Set-Cookie, X-Sum, Content-Length\r\n\r\n\
              2\r\nok\r\n0\r\nSet-Cookie: wxgate_session=planted; Path=/\r\nX-Sum: 1\r\n\
              Content-Length: 99\r\n\r\n",
        ),
        "bad-chunk" => {
            Some(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n")
        }
        "bare-lf-head" => Some(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
        "obs-fold" => Some(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
        "interim" => {
            Some(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        }
        "unasked-101" => Some(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
        "no-content-body" => Some(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nextra"),
        "bad-status" => Some(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
        "http10" => Some(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        "gzip-te" => Some(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nbytes"),
        "hop-trailer" => Some(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Connection, X-Sum\r\n\r\n\
              2\r\nok\r\n0\r\nConnection: close\r\nX-Sum: 2\r\n\r\n",
        ),
        _ => None,
    };
    if let Some(bytes) = hostile {
        return bytes.to_vec();
    }
    let body = format!(
        "conn={} {} {} body={}",
        request.conn,
        request.method,
        request.target,
        request.body.len()
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------
// Clients on raw sockets.
// ---------------------------------------------------------------------------------------

/// How a connection ended for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// The server closed it.
    Closed,
    /// Nothing more came for `QUIET`, and the connection stayed open.
    Hung,
}

/// Writes `parts` one after the other (a short pause between them), then, if `half_close`,
/// shuts the sending side; reads until the server closes or is quiet for `QUIET`.
async fn exchange(addr: SocketAddr, parts: &[&[u8]], half_close: bool) -> (String, End) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break End::Closed,
            Err(_) => break End::Hung,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), end)
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("HTTP/1.") {
        let line = &rest[at..];
        if let Some(code) = line.get(9..12).and_then(|c| c.parse().ok()) {
            if line.as_bytes().get(8) == Some(&b' ') {
                found.push(code);
            }
        }
        rest = &rest[at + 7..];
    }
    found
}

async fn gateway(upstream: SocketAddr, fast_paths: bool) -> wxgate::server::Running {
    let mut config = support::config_with_routes(&[("/", upstream)]);
    config.server.http1_fast_paths = fast_paths;
    config.server.limits.header_read_timeout = Duration::from_secs(5);
    support::start(&config).await
}

/// The gateway as the tests run it (`TEST_FAST_PATHS`).
async fn gateway_as_configured(upstream: SocketAddr) -> wxgate::server::Running {
    gateway(upstream, support::fast_paths()).await
}

// ---------------------------------------------------------------------------------------
// Findings 1-8, each on raw sockets.
// ---------------------------------------------------------------------------------------

/// Finding 1: a chunked body's trailer section cannot carry an identity or forwarding claim
/// past the header cleaning: request trailers are dropped, and `Trailer` with them.
#[tokio::test]
async fn request_trailers_never_reach_the_upstream() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    let request = b"POST /t1 HTTP/1.1\r\nHost: gw\r\nX-Case: t1\r\n\
        Trailer: X-WeChat-Identity, X-Forwarded-For, Remote-User\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
        X-WeChat-Identity: forged\r\nX-Forwarded-For: 10.9.9.9\r\nRemote-User: admin\r\n\r\n";
    let (text, _) = exchange(gw.addr, &[request], false).await;
    assert_eq!(statuses(&text), [200], "{text}");
    let heard = up.of_case("t1");
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].body, b"hello");
    assert!(heard[0].trailers.is_empty(), "{:?}", heard[0].trailers);
    assert_eq!(heard[0].header("trailer"), None);
    assert_eq!(heard[0].header("remote-user"), None);
    assert_eq!(heard[0].header("x-forwarded-for"), Some("127.0.0.1"));
    gw.shutdown().await;
}

/// Finding 2: CONNECT gets 405 and never reaches an upstream connection; the next visitor's
/// request gets its own answer.
#[tokio::test]
async fn connect_is_refused_without_touching_the_upstream_pool() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    // A connection to the upstream exists first, so a poisoned one would be reused.
    let (warm, _) = exchange(
        gw.addr,
        &[b"GET /warm HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"],
        false,
    )
    .await;
    assert_eq!(statuses(&warm), [200], "{warm}");
    for connect in [
        &b"CONNECT /x HTTP/1.1\r\nHost: gw\r\nX-Case: t2\r\n\r\nGET /tunnelled HTTP/1.1\r\n\r\n"[..],
        b"CONNECT gw:80 HTTP/1.1\r\nHost: gw:80\r\nX-Case: t2\r\n\r\nSSH-2.0-x\r\n",
    ] {
        let (text, end) = exchange(gw.addr, &[connect], false).await;
        assert_eq!(statuses(&text), [405], "{text}");
        assert!(text.contains("\r\nallow: "), "{text}");
        assert_eq!(end, End::Closed, "{text}");
    }
    let (next, _) = exchange(
        gw.addr,
        &[b"GET /next HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"],
        false,
    )
    .await;
    assert!(next.ends_with(" GET /next body=0"), "{next}");
    assert!(up.heard().iter().all(|h| h.method != "CONNECT"));
    assert!(up.of_case("t2").is_empty());
    gw.shutdown().await;
}

/// Finding 3: an upstream answer with both Content-Length and Transfer-Encoding is refused
/// (502) on both of the gateway's clients, and the next request on the client's connection
/// is served.
#[tokio::test]
async fn conflicting_upstream_framing_is_a_502_and_serving_goes_on() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    for path in ["cl-te", "te-cl"] {
        // Without a body (the gateway's own client) and with one (hyper's client).
        let get = format!("GET /{path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let post = format!("POST /{path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi");
        for first in [get, post] {
            let request =
                format!("{first}GET /after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
            let (text, end) = exchange(gw.addr, &[request.as_bytes()], false).await;
            assert_eq!(statuses(&text), [502, 200], "{first:?}: {text}");
            assert!(!text.contains("content-length: 3\r\n"), "{text}");
            assert!(text.ends_with(" GET /after body=0"), "{text}");
            assert_eq!(end, End::Closed);
        }
    }
    gw.shutdown().await;
}

/// Finding 4: a malformed chunked request body is the client's fault (400), and the upstream
/// connection that got part of it is not used again.
#[tokio::test]
async fn malformed_chunked_request_bodies_get_400_and_their_upstream_connection_goes() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    let bodies: [(&str, &[u8]); 5] = [
        ("longer", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("no-crlf", b"5\r\nhello0\r\n\r\n"),
        ("quoted-crlf", b"3;a=\"b\r\nabc\r\n\"\r\n0\r\n\r\n"),
        ("folded-trailer", b"5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n"),
        ("unterminated", b"5\r\nhello\r\n"),
    ];
    for (name, body) in bodies {
        let head = format!(
            "POST /t4/{name} HTTP/1.1\r\nHost: gw\r\nX-Case: t4-{name}\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        let request = [head.as_bytes(), body].concat();
        // The unterminated body ends when the client stops sending.
        let (text, end) = exchange(gw.addr, &[&request], true).await;
        assert_eq!(statuses(&text), [400], "{name}: {text}");
        assert_eq!(end, End::Closed, "{name}");
        let (next, _) = exchange(
            gw.addr,
            &[b"POST /t4/next HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"],
            false,
        )
        .await;
        assert_eq!(statuses(&next), [200], "{name}: {next}");
        let conn: usize = next
            .split("conn=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        // What reached the upstream of the broken request ended its connection; the upstream
        // never finished reading one, so it heard nothing for it on a connection reused.
        assert!(up.of_case(&format!("t4-{name}")).is_empty(), "{name}");
        let reused = up
            .heard()
            .iter()
            .filter(|h| h.conn == conn)
            .any(|h| h.target.starts_with("/t4/") && h.target != "/t4/next");
        assert!(
            !reused,
            "{name}: the broken request's connection was reused"
        );
    }
    gw.shutdown().await;
}

/// Finding 5: a bare LF where the last chunk's CRLF belongs makes hyper read the next request
/// as trailer fields; the gateway answers the first request with `Connection: close` and
/// closes, so the pipelined request is refused, never silently lost.
#[tokio::test]
async fn a_request_after_a_bare_lf_chunk_terminator_is_answered_or_refused() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    let request = b"POST /t5 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\nGET /t5/pipelined HTTP/1.1\r\nHost: gw\r\n\r\n";
    let (text, end) = exchange(gw.addr, &[request], false).await;
    let answered = statuses(&text).len() == 2 && text.contains("GET /t5/pipelined");
    let refused = statuses(&text).len() == 1 && text.contains("\r\nconnection: close\r\n");
    assert!(answered || refused, "{text}");
    assert_eq!(end, End::Closed, "{text}");
    gw.shutdown().await;
}

/// Finding 6: a client that sends a POST and then shuts its sending side gets its answer.
#[tokio::test]
async fn a_post_followed_by_half_close_is_answered() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    for request in [
        &b"POST /t6 HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"POST /t6 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /t6 HTTP/1.1\r\nHost: gw\r\n\r\n",
    ] {
        let (text, end) = exchange(gw.addr, &[request], true).await;
        assert_eq!(statuses(&text), [200], "{text}");
        assert!(text.contains(" /t6 body="), "{text}");
        assert_eq!(end, End::Closed);
    }
    gw.shutdown().await;
}

/// Finding 7: an HTTP/2 client's several `cookie` fields reach the HTTP/1.1 upstream as one
/// field, joined with "; " (RFC 9113 §8.2.3).
#[tokio::test]
async fn http2_cookie_fields_are_joined_for_the_upstream() {
    use http_body_util::{BodyExt, Empty};
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .uri(format!("http://{}/t7", gw.addr))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .header("x-case", "t7")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.unwrap();
    let heard = up.of_case("t7");
    assert_eq!(heard.len(), 1);
    let cookies: Vec<&str> = heard[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
    gw.shutdown().await;
}

/// Finding 8: an upstream's trailer fields go through the header filter and more: its
/// `Set-Cookie` for the gateway's session, a hop-by-hop `Connection` and a `Content-Length`
/// never reach the client; an ordinary declared trailer does.
#[tokio::test]
async fn upstream_trailers_are_filtered_like_headers() {
    let up = RawUpstream::start().await;
    let gw = gateway_as_configured(up.addr).await;
    for path in ["trailer-cookie", "hop-trailer"] {
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\nConnection: close\r\n\r\n"
        );
        let (text, _) = exchange(gw.addr, &[request.as_bytes()], false).await;
        assert_eq!(statuses(&text), [200], "{text}");
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(body.starts_with("2\r\nok\r\n0\r\n"), "{text}");
        assert!(!body.contains("planted"), "{text}");
        assert!(
            !body.to_ascii_lowercase().contains("content-length"),
            "{text}"
        );
        assert!(!body.to_ascii_lowercase().contains("connection"), "{text}");
        assert!(body.contains("x-sum: "), "{text}");
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The differential harness.
// ---------------------------------------------------------------------------------------

/// One corpus entry: the bytes a client sends (in parts, a short pause between them), and
/// whether it then shuts its sending side. Every case ends with a pipelined
/// `GET /dN/next … Connection: close`, so "was the next request intact" is always asked.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    parts: Vec<Vec<u8>>,
    half_close: bool,
}

/// A request: request line, the fields given (raw, joined with `eol`), the body.
fn raw_request(line: &str, fields: &[&str], body: &[u8], eol: &str) -> Vec<u8> {
    let mut out = format!("{line}{eol}");
    for field in fields {
        out.push_str(field);
        out.push_str(eol);
    }
    out.push_str(eol);
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The corpus: generated permutations, each named by what it tries.
fn corpus() -> Vec<Case> {
    let mut cases: Vec<(String, Vec<Vec<u8>>, bool)> = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| cases.push((name, vec![bytes], false));
    let host = "Host: gw";
    // Request lines: methods x versions, and odd targets.
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "get",
        "G\x00T", "GE T", "PRI", "M-SEARCH", "X",
    ];
    let versions = [
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/1.2",
        "HTTP/2.0",
        "http/1.1",
        "HTTP/1.1 ",
        "HTTP/01.1",
        "HTTP/1.1x",
        "",
    ];
    for method in methods {
        for version in versions {
            let line = format!("{method} /p {version}");
            add(
                format!("line {method:?} {version:?}"),
                raw_request(&line, &[host], b"", "\r\n"),
            );
        }
    }
    let targets = [
        "/p",
        "//p",
        "/p?q=1&r",
        "*",
        "http://gw/p",
        "https://gw/p",
        "gw:80",
        "/%00",
        "/p#frag",
        "/p p",
        "/\x7f",
        "/../../etc/passwd",
        "/p/%2e%2e/q",
        "/\u{00e9}",
        "p",
        "/p\t",
        "/p?\x01",
        "",
    ];
    for target in targets {
        add(
            format!("target {target:?}"),
            raw_request(&format!("GET {target} HTTP/1.1"), &[host], b"", "\r\n"),
        );
    }
    // Content-Length spellings, alone and twice.
    let lengths = [
        "5",
        "05",
        "+5",
        "-5",
        "5 ",
        " 5",
        "5,5",
        "5, 5",
        "5, 6",
        "0x5",
        "",
        "5\x0b",
        "99999999999999999999",
        "1_0",
        "4",
        "6",
    ];
    for length in lengths {
        add(
            format!("content-length {length:?}"),
            raw_request(
                "POST /p HTTP/1.1",
                &[host, &format!("Content-Length: {length}")],
                b"hello",
                "\r\n",
            ),
        );
        add(
            format!("content-length twice 5 and {length:?}"),
            raw_request(
                "POST /p HTTP/1.1",
                &[
                    host,
                    "Content-Length: 5",
                    &format!("Content-Length: {length}"),
                ],
                b"hello",
                "\r\n",
            ),
        );
    }
    // Transfer-Encoding spellings, alone and beside a length; on GET and in HTTP/1.0.
    let chunked_body = b"5\r\nhello\r\n0\r\n\r\n";
    let codings = [
        "chunked",
        "Chunked",
        "CHUNKED",
        " chunked",
        "chunked ",
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        "xchunked",
        "chunked\x0b",
        "\tchunked",
        "chunked, chunked",
        "",
        "chunked;q=1",
        "\"chunked\"",
    ];
    for coding in codings {
        let te = format!("Transfer-Encoding: {coding}");
        add(
            format!("transfer-encoding {coding:?}"),
            raw_request("POST /p HTTP/1.1", &[host, &te], chunked_body, "\r\n"),
        );
        add(
            format!("transfer-encoding {coding:?} and content-length"),
            raw_request(
                "POST /p HTTP/1.1",
                &[host, &te, "Content-Length: 3"],
                chunked_body,
                "\r\n",
            ),
        );
        add(
            format!("content-length and transfer-encoding {coding:?}"),
            raw_request(
                "POST /p HTTP/1.1",
                &[host, "Content-Length: 3", &te],
                chunked_body,
                "\r\n",
            ),
        );
        add(
            format!("GET with transfer-encoding {coding:?}"),
            raw_request("GET /p HTTP/1.1", &[host, &te], chunked_body, "\r\n"),
        );
        add(
            format!("HTTP/1.0 transfer-encoding {coding:?}"),
            raw_request("POST /p HTTP/1.0", &[host, &te], chunked_body, "\r\n"),
        );
    }
    // Field syntax: obs-fold, spaces before the colon, bare LF and CR, control bytes.
    let fields = [
        "Transfer-Encoding:\r\n chunked",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding\t: chunked",
        "Content-Length:\r\n 5",
        "Content-Length : 5",
        "X-A: a\r\n b",
        "X-A: a\r\n\tb",
        " X-A: a",
        "X-A: a\rb",
        "X-A: a\nb",
        "X-A: a\x00b",
        "X-A: a\x01b",
        "X-A: a\x7fb",
        "X-A: a\u{00ff}b",
        "X A: a",
        "X-A:",
        ":a",
        "X-A a",
        "Host: a\r\nHost: b",
        "Host: a b",
        "Host: a@b",
        "Host:",
        "Connection: close",
        "Connection: keep-alive, X-Case",
        "Connection: x-forwarded-for",
        "X-WeChat-Identity: forged",
        "X_WeChat_Identity: forged",
        "Remote-User: admin",
        "X-Forwarded-For: 10.0.0.1",
        "Forwarded: for=10.0.0.1",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "TE: gzip",
        "Keep-Alive: timeout=1",
        "Proxy-Authorization: Basic eA==",
    ];
    for field in fields {
        for (method, body) in [("GET", &b""[..]), ("POST", &b"hello"[..])] {
            let length = "Content-Length: 5";
            let mut all = vec![host, field];
            if method == "POST" {
                all.push(length);
            }
            add(
                format!("{method} field {field:?}"),
                raw_request(&format!("{method} /p HTTP/1.1"), &all, body, "\r\n"),
            );
        }
    }
    for eol in ["\n", "\r", "\r\r\n", "\n\r"] {
        for (method, body, extra) in [
            ("GET", &b""[..], None),
            ("POST", &b"hello"[..], Some("Content-Length: 5")),
            (
                "POST",
                &chunked_body[..],
                Some("Transfer-Encoding: chunked"),
            ),
        ] {
            let mut all = vec![host];
            all.extend(extra);
            add(
                format!("{method} line ends {eol:?}"),
                raw_request(&format!("{method} /p HTTP/1.1"), &all, body, eol),
            );
        }
    }
    // Chunked bodies: sizes, extensions, terminators, trailers.
    let chunked: [(&str, &[u8]); 30] = [
        ("valid", b"5\r\nhello\r\n0\r\n\r\n"),
        ("two chunks", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
        ("extension", b"5;a=b\r\nhello\r\n0\r\n\r\n"),
        ("quoted extension", b"5;a=\"b c\"\r\nhello\r\n0\r\n\r\n"),
        ("extension with bare LF", b"5;a=b\nhello\r\n0\r\n\r\n"),
        (
            "quoted CRLF in extension",
            b"3;a=\"b\r\nabc\r\n\"\r\n0\r\n\r\n",
        ),
        ("leading zeros", b"0005\r\nhello\r\n0\r\n\r\n"),
        ("upper-case hex", b"A\r\nhellohello\r\n0\r\n\r\n"),
        ("size with space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("size with tab", b"5\t\r\nhello\r\n0\r\n\r\n"),
        ("signed size", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("hex prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("huge size", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("size bare LF", b"5\nhello\r\n0\r\n\r\n"),
        ("data bare LF", b"5\r\nhello\n0\r\n\r\n"),
        ("data longer than size", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("data shorter than size", b"7\r\nhello\r\n0\r\n\r\n"),
        ("missing CRLF after data", b"5\r\nhello0\r\n\r\n"),
        ("bare LF terminator", b"5\r\nhello\r\n0\r\n\n"),
        ("bare CR terminator", b"5\r\nhello\r\n0\r\n\r"),
        ("last chunk bare LF", b"5\r\nhello\r\n0\n\r\n"),
        ("trailer", b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
        (
            "identity trailer",
            b"5\r\nhello\r\n0\r\nX-WeChat-Identity: forged\r\n\r\n",
        ),
        (
            "length trailer",
            b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n",
        ),
        ("folded trailer", b"5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n"),
        ("trailer bare LF", b"5\r\nhello\r\n0\r\nX-A: a\n\r\n"),
        ("trailer no colon", b"5\r\nhello\r\n0\r\nX-A\r\n\r\n"),
        ("empty size line", b"\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("no last chunk", b"5\r\nhello\r\n\r\n"),
        ("negative size", b"-1\r\nhello\r\n0\r\n\r\n"),
    ];
    for (name, body) in chunked {
        for method in ["POST", "PUT"] {
            add(
                format!("{method} chunked {name}"),
                raw_request(
                    &format!("{method} /p HTTP/1.1"),
                    &[host, "Transfer-Encoding: chunked"],
                    body,
                    "\r\n",
                ),
            );
        }
    }
    // Expect and Upgrade.
    let asks: [(&str, &[&str], &[u8]); 12] = [
        (
            "expect 100-continue",
            &["Expect: 100-continue", "Content-Length: 5"],
            b"hello",
        ),
        (
            "expect 100-continue no body",
            &["Expect: 100-continue"],
            b"",
        ),
        (
            "expect other",
            &["Expect: other", "Content-Length: 5"],
            b"hello",
        ),
        (
            "expect upper-case",
            &["Expect: 100-Continue", "Content-Length: 5"],
            b"hello",
        ),
        (
            "upgrade websocket no key",
            &["Connection: Upgrade", "Upgrade: websocket"],
            b"",
        ),
        (
            "upgrade h2c",
            &[
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQAAP__",
            ],
            b"",
        ),
        (
            "connection upgrade without upgrade",
            &["Connection: upgrade"],
            b"",
        ),
        ("upgrade without connection", &["Upgrade: websocket"], b""),
        (
            "upgrade with body",
            &[
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Content-Length: 5",
            ],
            b"hello",
        ),
        (
            "upgrade tls",
            &["Connection: Upgrade", "Upgrade: TLS/1.0"],
            b"",
        ),
        (
            "h2 preface mid-connection",
            &[],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
        (
            "many fields",
            &["X-1: 1", "X-2: 2", "X-3: 3", "X-4: 4", "X-5: 5", "X-6: 6"],
            b"",
        ),
    ];
    for (name, fields, body) in asks {
        for method in ["GET", "POST"] {
            let mut all = vec![host];
            all.extend_from_slice(fields);
            add(
                format!("{method} {name}"),
                raw_request(&format!("{method} /p HTTP/1.1"), &all, body, "\r\n"),
            );
        }
    }
    // Pipelining across the lane and hyper: bodiless, with a body, bodiless again.
    let mut pipelined = raw_request("GET /p/1 HTTP/1.1", &[host], b"", "\r\n");
    pipelined.extend(raw_request(
        "POST /p/2 HTTP/1.1",
        &[host, "Content-Length: 5"],
        b"hello",
        "\r\n",
    ));
    pipelined.extend(raw_request("GET /p/3 HTTP/1.1", &[host], b"", "\r\n"));
    pipelined.extend(raw_request(
        "PUT /p/4 HTTP/1.1",
        &[host, "Transfer-Encoding: chunked"],
        chunked_body,
        "\r\n",
    ));
    pipelined.extend(raw_request("HEAD /p/5 HTTP/1.1", &[host], b"", "\r\n"));
    add("pipelined lane and hyper".to_owned(), pipelined.clone());
    // Hostile upstream answers, each asked for without and with a body.
    for path in [
        "cl-te",
        "te-cl",
        "two-lengths",
        "long-body",
        "trailer-cookie",
        "bad-chunk",
        "bare-lf-head",
        "obs-fold",
        "interim",
        "unasked-101",
        "no-content-body",
        "bad-status",
        "http10",
        "gzip-te",
        "hop-trailer",
    ] {
        add(
            format!("upstream {path} to GET"),
            raw_request(
                &format!("GET /p/{path} HTTP/1.1"),
                &[host, "TE: trailers"],
                b"",
                "\r\n",
            ),
        );
        add(
            format!("upstream {path} to POST"),
            raw_request(
                &format!("POST /p/{path} HTTP/1.1"),
                &[host, "Content-Length: 5"],
                b"hello",
                "\r\n",
            ),
        );
        add(
            format!("upstream {path} to HEAD"),
            raw_request(&format!("HEAD /p/{path} HTTP/1.1"), &[host], b"", "\r\n"),
        );
    }
    // Splits at every byte of a request with a body and of one without.
    let splits = [
        (
            "GET",
            raw_request("GET /p HTTP/1.1", &[host, "X-A: 1"], b"", "\r\n"),
        ),
        (
            "chunked POST",
            raw_request(
                "POST /p HTTP/1.1",
                &[host, "Transfer-Encoding: chunked"],
                chunked_body,
                "\r\n",
            ),
        ),
    ];
    for (name, bytes) in splits {
        for at in 1..bytes.len() {
            cases.push((
                format!("{name} split at {at}"),
                vec![bytes[..at].to_vec(), bytes[at..].to_vec()],
                false,
            ));
        }
    }
    // Bodies cut short by a half-close.
    for (name, bytes) in [
        (
            "length",
            raw_request(
                "POST /p HTTP/1.1",
                &[host, "Content-Length: 10"],
                b"hello",
                "\r\n",
            ),
        ),
        (
            "chunked",
            raw_request(
                "POST /p HTTP/1.1",
                &[host, "Transfer-Encoding: chunked"],
                b"5\r\nhel",
                "\r\n",
            ),
        ),
        ("head", b"GET /p HTTP/1.1\r\nHost: gw\r\n".to_vec()),
    ] {
        cases.push((format!("half-close mid-{name}"), vec![bytes], true));
    }
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut parts, half_close))| {
            let id = format!("d{i}");
            let tag = |bytes: &mut Vec<u8>| {
                // The case's id in a field of its own and in the path, so the upstream's
                // records and the echoed answers can be told apart by case.
                let text = bytes.clone();
                if let Some(at) = text.windows(9).position(|w| w == b"\r\nHost: g") {
                    bytes.splice(at..at, format!("\r\nX-Case: {id}").into_bytes());
                }
                let text = bytes.clone();
                if let Some(at) = text.windows(3).position(|w| w == b" /p") {
                    bytes.splice(at + 1..at + 3, format!("/{id}").into_bytes());
                }
            };
            if parts.len() == 1 {
                tag(&mut parts[0]);
            }
            if !half_close {
                let next = format!(
                    "GET /{id}/next HTTP/1.1\r\nHost: gw\r\nX-Case: {id}\r\nConnection: close\r\n\r\n"
                );
                if let Some(last) = parts.last_mut() {
                    last.extend_from_slice(next.as_bytes());
                }
            }
            Case {
                name: format!("{id} {name}"),
                parts,
                half_close,
            }
        })
        .collect()
}

/// What one case did, in terms comparable across servers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    statuses: Vec<u16>,
    end: End,
    /// The pipelined `GET /dN/next` got its own answer from the upstream.
    next_answered: bool,
    /// What reached the upstream for this case: method, target, body length, trailers.
    upstream: Vec<String>,
    /// An answer meant for another request (another case's, or the upstream's hostile
    /// leftovers) reached this client.
    crossed: bool,
}

impl Outcome {
    fn cell(&self) -> String {
        let statuses: Vec<String> = self.statuses.iter().map(u16::to_string).collect();
        format!(
            "{} {}{}{} up:{}",
            if statuses.is_empty() {
                "-".to_owned()
            } else {
                statuses.join(",")
            },
            match self.end {
                End::Closed => "closed",
                End::Hung => "HUNG",
            },
            if self.next_answered {
                " next:ok"
            } else {
                " next:no"
            },
            if self.crossed { " CROSSED" } else { "" },
            self.upstream.len(),
        )
    }
}

async fn run_case(addr: SocketAddr, upstream: &RawUpstream, case: &Case, id: &str) -> Outcome {
    let parts: Vec<&[u8]> = case.parts.iter().map(Vec::as_slice).collect();
    let (text, end) = exchange(addr, &parts, case.half_close).await;
    let next_answered = text.contains(&format!(" GET /{id}/next body=0"));
    // An echoed target of another case: ` /dM` with M not this case's number.
    let crossed = text.contains("poisoned")
        || text.match_indices(" /d").any(|(at, _)| {
            let number: String = text[at + 3..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            !number.is_empty() && number != id[1..]
        });
    let upstream = upstream
        .of_case(id)
        .iter()
        .map(|h| {
            format!(
                "{} {} body={} trailers={}",
                h.method,
                h.target,
                h.body.len(),
                h.trailers.len()
            )
        })
        .collect();
    Outcome {
        statuses: statuses(&text),
        end,
        next_answered,
        upstream,
        crossed,
    }
}

/// Runs the corpus against `addr`, a few cases at a time.
async fn run_corpus(addr: SocketAddr, upstream: &RawUpstream, cases: &[Case]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(cases.len());
    for batch in cases.chunks(16) {
        let runs = batch.iter().map(|case| {
            let id = case.name.split(' ').next().unwrap_or_default().to_owned();
            let upstream = upstream.clone();
            async move { run_case(addr, &upstream, case, &id).await }
        });
        outcomes.extend(futures_util::future::join_all(runs).await);
    }
    outcomes
}

/// Where the gateway with its own HTTP/1.1 and the gateway with hyper alone may differ, and
/// why (docs/http1.md, "Justified differences"). Matched against the case's name after its id.
const JUSTIFIED: &[(&str, &str)] = &[(
    "upstream bad-chunk to GET",
    "the upstream's body breaks at its first chunk. The lane writes a response's head as soon \
     as the body has nothing ready, so the client gets the head and a chunked body cut off by \
     the close; hyper holds the head until the first frame, so the client gets only the \
     close. Neither is a complete response; both close the connection.",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_corpus_fast_paths_on_and_off_agree() {
    let cases = corpus();
    assert!(cases.len() >= 400, "corpus of {}", cases.len());
    let up_on = RawUpstream::start().await;
    let up_off = RawUpstream::start().await;
    let on = gateway(up_on.addr, true).await;
    let off = gateway(up_off.addr, false).await;
    let (on_outcomes, off_outcomes) = tokio::join!(
        run_corpus(on.addr, &up_on, &cases),
        run_corpus(off.addr, &up_off, &cases)
    );
    let mut differences = BTreeMap::new();
    let mut unsafe_cases = Vec::new();
    for ((case, on), off) in cases.iter().zip(&on_outcomes).zip(&off_outcomes) {
        let what = case.name.split_once(' ').map_or("", |(_, what)| what);
        if on != off && !JUSTIFIED.iter().any(|(name, _)| *name == what) {
            differences.insert(
                case.name.clone(),
                (on.cell(), off.cell(), on.clone(), off.clone()),
            );
        }
        for (side, outcome) in [("on", on), ("off", off)] {
            if outcome.crossed || outcome.end == End::Hung && !case.half_close {
                unsafe_cases.push(format!("{side}: {} -> {}", case.name, outcome.cell()));
            }
        }
    }
    if let Ok(path) = std::env::var("HTTP1_REPORT") {
        let nginx = nginx_outcomes(&cases).await;
        write_report(&path, &cases, &on_outcomes, &off_outcomes, nginx.as_deref());
    }
    on.shutdown().await;
    off.shutdown().await;
    assert!(
        differences.is_empty(),
        "{} unjustified differences:\n{:#?}",
        differences.len(),
        differences
    );
    assert!(unsafe_cases.is_empty(), "{unsafe_cases:#?}");
}

/// The same corpus through nginx in front of the same kind of upstream, where nginx is
/// installed (the report only: nginx is not what CI checks).
async fn nginx_outcomes(cases: &[Case]) -> Option<Vec<Outcome>> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())?;
    let up = RawUpstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let block = format!(
        "upstream up {{ server {}; keepalive 16; }}\n\
         server {{ listen {addr}; location / {{ proxy_pass http://up; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; \
         proxy_set_header Host $http_host; }} }}",
        up.addr
    );
    let nginx = support::nginx::Nginx::start(&binary, addr, &block, &[]).await;
    let outcomes = run_corpus(nginx.addr, &up, cases).await;
    drop(nginx);
    Some(outcomes)
}

fn write_report(
    path: &str,
    cases: &[Case],
    on: &[Outcome],
    off: &[Outcome],
    nginx: Option<&[Outcome]>,
) {
    let mut out =
        String::from("| case | fast paths on | fast paths off | nginx |\n|---|---|---|---|\n");
    for (i, case) in cases.iter().enumerate() {
        let nginx_cell = nginx.map_or("(not run)".to_owned(), |n| n[i].cell());
        let mark = if on[i] != off[i] { " **≠**" } else { "" };
        out.push_str(&format!(
            "| `{}`{mark} | {} | {} | {} |\n",
            case.name.replace('|', "\\|").replace('`', "'"),
            on[i].cell(),
            off[i].cell(),
            nginx_cell
        ));
    }
    std::fs::write(path, out).unwrap();
}

/// hyper's own behaviour behind finding 5, recorded so that a hyper that changes it shows up
/// here (docs/http1.md, "hyper and the bare LF"): a bare hyper HTTP/1.1 server reads
/// `0\r\n\n` as the start of a trailer section, takes the pipelined request's head as trailer
/// fields (httparse ends the section at the leading LF and drops the rest) and never answers
/// that request.
#[tokio::test]
async fn hyper_alone_swallows_a_request_after_a_bare_lf_chunk_terminator() {
    use http_body_util::{BodyExt, Full};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(Mutex::new(Vec::new()));
    let log = answered.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let log = log.clone();
                async move {
                    let target = request.uri().to_string();
                    let collected = request.into_body().collect().await;
                    let trailers = collected.ok().and_then(|c| c.trailers().cloned());
                    log.lock()
                        .unwrap()
                        .push((target, trailers.map(|t| t.len())));
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    let request = b"POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n";
    let (text, end) = exchange(addr, &[request], false).await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(
        end,
        End::Hung,
        "hyper waits for a request it has already read"
    );
    assert_eq!(*answered.lock().unwrap(), [("/first".to_owned(), Some(0))]);
}
