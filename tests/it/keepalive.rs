//! Client keep-alive connections, over real sockets: a connection idle between requests is
//! parked (it keeps only its socket) and serves the client's next request as if nothing had
//! happened — whole, split, pipelined, with a body, over TLS — and a parked connection is
//! still closed by the idle timeout and by shutdown.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::upstream::Upstream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use wxgate::server::Running;

/// `wxgate_parked_connections` from the admin listener.
async fn parked(gw: &Running) -> i64 {
    support::metrics(gw)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("wxgate_parked_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the parked gauge is exported")
}

/// Waits until the gateway reports `want` parked connections (the park time is a second or
/// two of quiet).
async fn until_parked(gw: &Running, want: i64) {
    for _ in 0..100 {
        if parked(gw).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never reported {want} parked connection(s)");
}

/// One response off a keep-alive stream: status, and the body (by Content-Length).
async fn response<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert_eq!(n, 1, "closed before a whole response head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (status, body)
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, path: &str) -> (u16, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    response(stream).await
}

async fn gateway() -> (Upstream, Running) {
    gateway_with(|_| {}).await
}

/// A gateway with every path public to one recording upstream, its configuration tuned first.
async fn gateway_with(tune: impl FnOnce(&mut wxgate::config::Config)) -> (Upstream, Running) {
    let up = Upstream::start().await;
    let mut config = support::config_with_routes(&[("/", up.addr)]);
    tune(&mut config);
    let gw = support::start(&config).await;
    (up, gw)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_parked_connection_serves_the_next_request_on_the_same_socket() {
    let (up, gw) = gateway().await;
    let mut stream = connect(gw.addr).await;
    assert_eq!(get(&mut stream, "/first").await.0, 200);
    until_parked(&gw, 1).await;

    assert_eq!(get(&mut stream, "/second").await.0, 200);
    assert_eq!(
        parked(&gw).await,
        0,
        "a woken connection is no longer parked"
    );
    let seen: Vec<(String, String)> = up.seen().into_iter().map(|s| (s.method, s.uri)).collect();
    assert_eq!(
        seen,
        [
            ("GET".into(), "/first".into()),
            ("GET".into(), "/second".into())
        ]
    );
    // And it parks again, as often as it falls quiet.
    until_parked(&gw, 1).await;
    assert_eq!(get(&mut stream, "/third").await.0, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_that_wakes_a_parked_connection_in_pieces_is_served_whole() {
    let (up, gw) = gateway().await;
    let mut stream = connect(gw.addr).await;
    assert_eq!(get(&mut stream, "/first").await.0, 200);
    until_parked(&gw, 1).await;

    // A head far longer than the bytes a parked connection reads to notice it woke, sent in
    // three pieces, then a body.
    let body = vec![b'b'; 20_000];
    let head = format!(
        "POST /upload?{} HTTP/1.1\r\nHost: gw.test\r\nX-Long: {}\r\nContent-Length: {}\r\n\r\n",
        "q".repeat(300),
        "v".repeat(2000),
        body.len()
    );
    let (a, rest) = head.as_bytes().split_at(10);
    let (b, c) = rest.split_at(1000);
    for piece in [a, b, c, &body[..]] {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(response(&mut stream).await.0, 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["x-long"].len(), 2000);
    assert_eq!(seen.body_len, body.len());
    assert_eq!(seen.body_sha256, hex::encode(Sha256::digest(&body)));
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_pipelined_onto_a_parked_connection_are_all_answered_in_order() {
    let (up, gw) = gateway().await;
    let mut stream = connect(gw.addr).await;
    assert_eq!(get(&mut stream, "/first").await.0, 200);
    until_parked(&gw, 1).await;

    let three: String = ["/a", "/b", "/status/404"]
        .iter()
        .map(|path| format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n"))
        .collect();
    stream.write_all(three.as_bytes()).await.unwrap();
    let statuses = [
        response(&mut stream).await.0,
        response(&mut stream).await.0,
        response(&mut stream).await.0,
    ];
    assert_eq!(statuses, [200, 200, 404]);
    let uris: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/first", "/a", "/b", "/status/404"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_head_is_never_parked_so_its_header_timeout_is_never_restarted() {
    let (up, gw) = gateway_with(|config| {
        config.server.limits.header_read_timeout = Duration::from_secs(3);
    })
    .await;
    let mut stream = connect(gw.addr).await;
    assert_eq!(get(&mut stream, "/first").await.0, 200);
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
        .await
        .unwrap();
    // A byte every 2.2 s: quiet long enough to park between bytes, and a park would start the
    // head over on a new hyper connection with a fresh header timeout.
    let mut buf = [0u8; 256];
    let mut cut_off = false;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_millis(2200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => cut_off = true,
            Ok(Ok(n)) => {
                assert!(buf[..n].starts_with(b"HTTP/1.1 408"), "{buf:?}");
                cut_off = true;
            }
            Err(_) => cut_off = stream.write_all(b"a").await.is_err(),
        }
        if cut_off {
            break;
        }
    }
    assert!(cut_off, "a head dribbling in outlived five header timeouts");
    // Cut off by the first timeout (3 s), not a restarted one (5 s and later).
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(parked(&gw).await, 0);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_hidden_in_an_unread_body_never_reaches_the_upstream() {
    // `/base/` is protected: without a session the gateway answers itself, reading no body.
    let w = support::wechat::world().await;
    let host = w.origin.trim_start_matches("http://").to_owned();
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let padding = "x".repeat(100);
    let request = format!(
        "POST /base/form HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len() + padding.len()
    );
    let mut stream = connect(w.gw.addr).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    // The rest of the body only after the connection has had time to fall quiet.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = stream.write_all(padding.as_bytes()).await;
    let after = format!("GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let _ = stream.write_all(after.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uris: Vec<String> = w.up.seen().into_iter().map(|s| s.uri).collect();
    assert!(!uris.iter().any(|u| u.contains("smuggled")), "{uris:?}");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn a_response_the_client_has_not_taken_yet_is_never_cut_short() {
    use tokio::io::AsyncBufReadExt;
    let (_up, gw) = gateway().await;
    let mut stream = connect(gw.addr).await;
    // More than loopback's socket buffers hold: the last of it waits in the gateway until
    // the client reads, with the upstream's body long finished.
    const SIZE: usize = 64 * 1024 * 1024;
    let request = format!("GET /big/{SIZE} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(parked(&gw).await, 0, "parked with a response half sent");

    let mut reader = tokio::io::BufReader::new(&mut stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut received = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16).expect("a chunk size line");
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).await.unwrap();
        received += size;
        if size == 0 {
            break;
        }
    }
    assert_eq!(received, SIZE);
    drop(reader);
    assert_eq!(get(&mut stream, "/next").await.0, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_parked_connection_is_closed_once_idle_for_the_idle_timeout() {
    let (_up, gw) = gateway_with(|config| {
        config.server.limits.idle_timeout = Duration::from_millis(2500);
    })
    .await;
    let mut stream = connect(gw.addr).await;
    assert_eq!(get(&mut stream, "/first").await.0, 200);
    until_parked(&gw, 1).await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a parked connection outlived the idle timeout"
    );
    until_parked(&gw, 0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_without_waiting_for_the_drain_timeout() {
    let (_up, gw) = gateway_with(|config| {
        config.server.drain_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stream = connect(gw.addr).await;
    assert_eq!(get(&mut stream, "/first").await.0, 200);
    until_parked(&gw, 1).await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), gw.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown waited on a parked connection");
    let mut buf = [0u8; 16];
    assert!(matches!(stream.read(&mut buf).await, Ok(0) | Err(_)));
}

#[tokio::test]
async fn a_parked_tls_connection_resumes_on_the_same_session() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = support::self_signed(dir.path(), "localhost");
    let (up, gw) = gateway_with(|config| {
        config.server.tls = Some(tls);
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let tcp = connect(gw.addr).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();

    assert_eq!(get(&mut tls, "/first").await.0, 200);
    until_parked(&gw, 1).await;
    assert_eq!(get(&mut tls, "/second").await.0, 200);
    assert_eq!(up.count(), 2);
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    gw.shutdown().await;
}
