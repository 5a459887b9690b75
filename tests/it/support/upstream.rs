//! A real HTTP upstream for tests. It records every request that reaches it and answers by
//! path: `/status/N`, `/big/N` (N bytes streamed), `/slow/MS`, `/trailers`, `/hop`, `/ws`
//! (WebSocket echo), `/set-cookie/NAME` (sets NAME and `app`); anything else echoes the
//! request as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

/// What reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
    pub trailers: Option<HeaderMap>,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<tokio::sync::Notify>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let upstream = Upstream {
            addr,
            seen: seen.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.notified() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(req, seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Stops accepting; the port then refuses connections.
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

async fn answer(mut req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers = req.headers().clone();
    if path == "/ws" {
        record(&seen, method, uri, headers, &[], None);
        return websocket(&mut req);
    }
    let mut body = Vec::new();
    let mut trailers = None;
    let mut incoming = req.into_body();
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(data) => body.extend_from_slice(&data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    record(
        &seen,
        method.clone(),
        uri.clone(),
        headers.clone(),
        &body,
        trailers.clone(),
    );
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["status", code] => {
            let code = code.parse().unwrap_or(500);
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r.headers_mut()
                .insert("x-upstream-status", code.to_string().parse().unwrap());
            r
        }
        ["big", n] => streamed(n.parse().unwrap_or(0)),
        ["slow", ms, ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            Response::new(full("slow done"))
        }
        ["trailers"] => with_trailers(),
        ["set-cookie", name] => {
            let mut r = Response::new(full("cookies"));
            for cookie in [
                format!("{name}=planted; Path=/"),
                "app=1; Path=/".to_owned(),
            ] {
                r.headers_mut()
                    .append("set-cookie", cookie.parse().unwrap());
            }
            r
        }
        ["hop"] => {
            let mut r = Response::new(full("hop"));
            let h = r.headers_mut();
            h.insert("connection", "x-upstream-private".parse().unwrap());
            h.insert("x-upstream-private", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-upstream-public", "fine".parse().unwrap());
            r
        }
        _ => echo(&method, &uri, &headers, &body, trailers.as_ref()),
    }
}

fn record(
    seen: &Mutex<Vec<Seen>>,
    method: String,
    uri: String,
    headers: HeaderMap,
    body: &[u8],
    trailers: Option<HeaderMap>,
) {
    seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body_len: body.len(),
        body_sha256: hex::encode(Sha256::digest(body)),
        trailers,
    });
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

fn echo(
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
    trailers: Option<&HeaderMap>,
) -> Response<Body> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex::encode(Sha256::digest(body)),
        "trailers": trailers.map(|t| t.len()).unwrap_or(0),
    });
    let mut r = Response::new(full(json.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// `n` bytes in 64 KiB chunks, produced as they are sent (no Content-Length).
fn streamed(n: usize) -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    let chunks = n.div_ceil(CHUNK);
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![(i % 251) as u8; len])))
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn with_trailers() -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"part one,"))),
        Ok(Frame::data(Bytes::from_static(b"part two"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    r.headers_mut()
        .insert("trailer", "x-checksum".parse().unwrap());
    r
}

fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        use futures_util::SinkExt;
        while let Some(Ok(msg)) = rx.next().await {
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    r
}
