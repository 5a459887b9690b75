//! HTTP/1.1 exchanges with an upstream, driven in the task of the request that makes them.
//!
//! Why not hyper's client for these: its connection runs as a task of its own, so every
//! request crosses to it over a channel, its response comes back over a oneshot and every
//! body chunk over another channel, each a wake-up of one task by another. Under callgrind
//! that hand-off and hyper's client codec were a quarter of a logged-in request. Here a
//! request without a body (nearly every page and asset load) is written to the socket
//! straight from its parsed head, and the response head and body are read from the socket
//! by whoever polls them. Requests with a body and protocol upgrades still go through
//! hyper's client, which writes a body while it reads an early response and hands over the
//! upgraded stream.
//!
//! Parsing is httparse's, as in hyper; which response has a body and how long it is are
//! `framing`'s to say, which fields go with the connection `hop`'s; what is decided here is
//! when the connection may carry another request.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version, request};
use http_body::Frame;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framing::{self, Declared, Framing, Reader, Step};
use super::head::{MAX_FIELDS, Span, field_spans};
use super::hop;

/// A connection as the connector opens it, with tokio's I/O traits.
pub type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Largest response head read; a longer one is refused as hyper's client refuses it.
const MAX_HEAD: usize = 64 * 1024;
/// Room made in the read buffer before a read: enough for nearly every response head and
/// small body at once. The buffer is reused by the next exchange once the bytes handed out
/// of it are gone, so a small response costs no allocation.
const READ_ROOM: usize = 8 * 1024;
/// A body whose reads fill the room doubles it, up to this, to be read in fewer system
/// calls; its connection starts small again once back in the pool.
const MAX_ROOM: usize = 256 * 1024;

/// Why an exchange or a body read failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Writing the request, or reading before any byte of the answer came, failed: on a
    /// reused connection, the upstream most likely closed it while it was idle.
    #[error("the upstream connection failed before an answer: {0}")]
    Unanswered(io::Error),
    /// The connection ended before any byte of the answer came.
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("the upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream's response head is malformed: {0}")]
    Malformed(&'static str),
    #[error("the upstream's response head is longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream switched protocols without being asked to")]
    UnaskedSwitch,
    #[error("the upstream closed the connection before the body's end")]
    Truncated,
}

impl WireError {
    /// True when the request may not have reached the upstream at all, so an idempotent
    /// one can be sent again on another connection.
    pub fn unanswered(&self) -> bool {
        matches!(self, WireError::Unanswered(_) | WireError::Closed)
    }
}

impl From<httparse::Error> for WireError {
    fn from(e: httparse::Error) -> Self {
        WireError::Malformed(match e {
            httparse::Error::TooManyHeaders => "too many header fields",
            httparse::Error::Version => "not HTTP/1.x",
            httparse::Error::Status => "bad status code",
            _ => "bad syntax",
        })
    }
}

/// One keep-alive connection to an upstream and the bytes read from it but not yet used.
pub struct Wire {
    io: Io,
    buf: BytesMut,
    /// Room made before the next body read.
    room: usize,
    spans: Vec<Span>,
}

/// A response head, with what it says of its body and of the connection.
pub struct Answer {
    pub response: Response<()>,
    framing: Framing,
    /// The connection may carry another request once the body has been read.
    reusable: bool,
}

impl Wire {
    pub fn new(io: Io) -> Box<Self> {
        Box::new(Wire {
            io,
            buf: BytesMut::new(),
            room: READ_ROOM,
            spans: Vec::new(),
        })
    }

    /// Whether an idle connection can take a request: neither closed by the upstream nor
    /// holding bytes nobody asked for. Costs no system call while the socket has had
    /// nothing to read since the last response: tokio answers from its readiness state.
    pub fn still_open(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.buf.reserve(READ_ROOM);
        matches!(
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf),
            Poll::Pending
        )
    }

    /// Writes a request head (from `encode_head`) and reads the response's head; 1xx
    /// interim responses are skipped, as hyper's client skips them.
    pub async fn exchange(&mut self, head: &[u8], method: &Method) -> Result<Answer, WireError> {
        if let Err(e) = self.write_head(head).await {
            return Err(WireError::Unanswered(e));
        }
        let mut answered = false;
        loop {
            if let Some(head) = parse_head(&mut self.buf, &mut self.spans)? {
                answered = true;
                let status = head.response.status();
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(WireError::UnaskedSwitch);
                }
                if status.is_informational() {
                    continue;
                }
                let (framing, reusable) = framing(&head, method)?;
                return Ok(Answer {
                    response: head.response,
                    framing,
                    reusable,
                });
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(WireError::HeadTooLarge);
            }
            self.buf.reserve(READ_ROOM);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if answered || !self.buf.is_empty() => return Err(WireError::Truncated),
                Ok(0) => return Err(WireError::Closed),
                Ok(_) => {}
                Err(e) if !answered && self.buf.is_empty() => {
                    return Err(WireError::Unanswered(e));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn write_head(&mut self, head: &[u8]) -> io::Result<()> {
        self.io.write_all(head).await?;
        self.io.flush().await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, WireError>> {
        self.buf.reserve(self.room);
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n >= self.room {
                self.room = (self.room * 2).min(MAX_ROOM);
            }
        }
        polled.map_err(WireError::from)
    }
}

/// The request head as it goes on the wire: request line, then the fields as they are in
/// the map. Its caller has removed hop-by-hop fields and set `Host`; a `POST`, `PUT` or
/// `PATCH` without a body says `Content-Length: 0`, which some upstreams require.
pub fn encode_head(parts: &request::Parts) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let method = parts.method.as_str();
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(method.len() + target.len() + fields + 40);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if framing::needs_zero_length(&parts.method, &parts.headers) {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A response head as read, with its connection fields already taken out of the map (the
/// response goes to the client as it is): what they said of the connection and the body.
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`, which an HTTP/1.0 answer needs to be reused.
    keep_alive: bool,
    /// Its framing fields (`Content-Length` stays in the map).
    declared: Declared,
}

/// A complete response head at the front of `buf`, taken out of it; `None` while it is
/// still incomplete. Field values share the head's bytes instead of being copied.
/// `spans` is scratch space, kept by the connection so no response allocates it.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
) -> Result<Option<Head>, WireError> {
    // Uninitialised slots, as hyper's: a hundred empty fields would be 3 KiB to clear on
    // every response.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let httparse::Status::Complete(len) =
        config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)?
    else {
        return Ok(None);
    };
    let code = parsed.code.unwrap_or_default();
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each field sits in the head (under `MAX_HEAD` plus one read), so the values can
    // be slices of it once frozen.
    field_spans(buf, parsed.headers, spans);
    let bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed("bad status code"))?;
    let mut head = Head {
        response: Response::new(()),
        close: false,
        keep_alive: false,
        declared: Declared::default(),
    };
    let mut headers = HeaderMap::with_capacity(spans.len());
    // `Connection` names fields to remove (any element but `keep-alive`): looked for once the
    // map is built, by text, so that nothing is allocated for them.
    let mut named = false;
    for &[name, name_len, value, value_len] in spans.iter() {
        let (name, value) = (name as usize, value as usize);
        let name = HeaderName::from_bytes(&bytes[name..name + name_len as usize])
            .map_err(|_| WireError::Malformed("bad field name"))?;
        let raw = &bytes[value..value + value_len as usize];
        if name == header::CONNECTION {
            named |= head.note_connection(raw);
        }
        head.declared.note(&name, raw);
        if hop::is_hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice(value..value + value_len as usize))
            .map_err(|_| WireError::Malformed("bad field value"))?;
        headers.append(name, value);
    }
    if named {
        for &[name, name_len, value, value_len] in spans.iter() {
            let (name, value) = (name as usize, value as usize);
            if bytes[name..name + name_len as usize].eq_ignore_ascii_case(b"connection") {
                hop::remove_named(
                    &mut headers,
                    &bytes[value..value + value_len as usize],
                    false,
                );
            }
        }
    }
    *head.response.status_mut() = status;
    *head.response.version_mut() = version;
    *head.response.headers_mut() = headers;
    Ok(Some(head))
}

impl Head {
    /// Reads one `Connection` value's options; true if it names a field to remove.
    fn note_connection(&mut self, value: &[u8]) -> bool {
        let mut names = false;
        for token in hop::connection(value) {
            match token {
                hop::Token::Close => self.close = true,
                hop::Token::KeepAlive => self.keep_alive = true,
                hop::Token::Upgrade | hop::Token::Other(_) => {}
            }
            names |= token.names().is_some();
        }
        names
    }
}

/// The body's framing and whether the connection outlives this response (RFC 9112 §6.3,
/// §9.3).
pub(crate) fn framing(head: &Head, method: &Method) -> Result<(Framing, bool), WireError> {
    let reusable = match head.response.version() {
        Version::HTTP_11 => !head.close,
        _ => !head.close && head.keep_alive,
    };
    let status = head.response.status();
    let framing = framing::of_upstream_answer(&head.declared, method, status)
        .map_err(WireError::Malformed)?;
    // A body that ends with the connection leaves none to reuse.
    Ok((framing, reusable && framing != Framing::UntilClose))
}

/// A response body read from its connection by whoever polls it.
pub struct WireBody {
    wire: Box<Wire>,
    reader: Reader,
    reusable: bool,
}

impl WireBody {
    pub fn new(wire: Box<Wire>, answer: Answer) -> (Response<()>, Self) {
        let body = WireBody {
            wire,
            reader: Reader::new(answer.framing),
            reusable: answer.reusable,
        };
        (answer.response, body)
    }

    pub fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    pub fn exact_len(&self) -> Option<u64> {
        self.reader.exact_len()
    }

    /// The connection, once the body has been read to its end and the upstream left it
    /// fit for another request.
    pub fn into_reusable(mut self) -> Option<Box<Wire>> {
        if !(self.is_end_stream() && self.reusable && self.wire.buf.is_empty()) {
            return None;
        }
        if self.wire.room > READ_ROOM {
            // A large body grew the buffer: an idle connection keeps only a small one.
            self.wire.room = READ_ROOM;
            self.wire.buf = BytesMut::new();
        }
        Some(self.wire)
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        loop {
            match self.reader.step(&mut self.wire.buf) {
                Step::Done => return Poll::Ready(None),
                Step::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
                Step::Again => {}
                Step::Read => match self.wire.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) if self.reader == Reader::UntilClose => {
                        self.reader = Reader::Done;
                        self.reusable = false;
                    }
                    Poll::Ready(Ok(0)) => {
                        self.reusable = false;
                        return Poll::Ready(Some(Err(WireError::Truncated)));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        self.reusable = false;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Step::Fail(reason) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(WireError::Malformed(reason))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_head(&mut buf, &mut Vec::new()).unwrap().unwrap();
        assert!(buf.is_empty(), "the head is taken out of the buffer whole");
        head
    }

    fn framed(text: &str, method: Method) -> Result<(Framing, bool), WireError> {
        framing(&head(text), &method)
    }

    #[test]
    fn a_head_is_parsed_only_once_complete_and_leaves_what_follows() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Two: a\r\nX-Two: b\r\n\r\nhello";
        for cut in 0..text.len() - 5 {
            let mut partial = BytesMut::from(&text[..cut]);
            assert!(
                parse_head(&mut partial, &mut Vec::new()).unwrap().is_none(),
                "cut at {cut}"
            );
            assert_eq!(partial.len(), cut, "nothing consumed at {cut}");
        }
        let mut buf = BytesMut::from(&text[..]);
        let response = parse_head(&mut buf, &mut Vec::new())
            .unwrap()
            .unwrap()
            .response;
        assert_eq!(&buf[..], b"hello");
        assert_eq!(response.status(), 200);
        let twos: Vec<_> = response.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"]);
    }

    #[test]
    fn connection_fields_are_read_then_left_out_of_the_response() {
        let parsed = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
             X-Hop: 1\r\nProxy-Connection: close\r\nTransfer-Encoding: chunked\r\n\
             Upgrade: h2c\r\nX-Kept: yes\r\nSet-Cookie: a=1\r\n\r\n",
        );
        let mut names: Vec<&str> = parsed
            .response
            .headers()
            .keys()
            .map(|n| n.as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["set-cookie", "x-kept"]);
        assert!(parsed.keep_alive && !parsed.close);
        assert_eq!(
            framing(&parsed, &Method::GET).unwrap(),
            (Framing::Chunked, true)
        );
        let parsed = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
        assert_eq!(parsed.response.headers()["content-length"], "2");
        assert!(parsed.close);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        let get = || Method::GET;
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                true,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Empty, true),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                UntilClose,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                false,
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                Empty,
                true,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                true,
            ),
        ];
        for (text, framing, reusable) in cases {
            let got = framed(text, get()).unwrap();
            assert_eq!(got, (framing, reusable), "{text:?}");
        }
        let head_request = framed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD);
        assert_eq!(head_request.unwrap(), (Empty, true));
    }

    #[test]
    fn bad_lengths_are_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            // Both: a sign of response splitting, refused whichever comes first.
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framed(text, Method::GET).is_err(), "{text:?}");
        }
    }

    #[test]
    fn not_http_is_malformed() {
        for text in ["SSH-2.0-OpenSSH_9.2\r\n\r\n", "HTTP/1.1 abc OK\r\n\r\n"] {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(parse_head(&mut buf, &mut Vec::new()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_request_head_is_written_as_the_map_holds_it() {
        let (mut parts, ()) = http::Request::builder()
            .method(Method::POST)
            .uri("/a/b?x=1&y=%20")
            .header("host", "up.example")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            String::from_utf8(encode_head(&parts)).unwrap(),
            "POST /a/b?x=1&y=%20 HTTP/1.1\r\nhost: up.example\r\nx-two: 1\r\nx-two: 2\r\n\
             content-length: 0\r\n\r\n"
        );
        parts.method = Method::GET;
        let get = String::from_utf8(encode_head(&parts)).unwrap();
        assert!(!get.contains("content-length"), "{get}");
    }

    /// A connected pair over loopback: the gateway's side as a `Wire`, and the upstream's.
    async fn pair() -> (Box<Wire>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = TcpStream::connect(addr).await.unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        theirs.set_nodelay(true).unwrap();
        let io = TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(ours)));
        (Wire::new(io), theirs)
    }

    /// Data and trailers of the body that follows a response, as the client would get them.
    async fn read_body(mut body: WireBody) -> (Vec<u8>, Option<HeaderMap>, WireBody) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        (data, trailers, body)
    }

    #[tokio::test]
    async fn a_chunked_body_split_anywhere_is_read_whole_with_its_trailers() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=\"a b\"\r\nhello\r\nA\r\n, world!!!\r\n0\r\nx-sum: 15\r\nx-more: y\r\n\r\n";
        let head_len = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for cut in 1..answer.len() {
            let (mut wire, mut upstream) = pair().await;
            let writer = tokio::spawn(async move {
                upstream.write_all(&answer[..cut]).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                upstream.write_all(&answer[cut..]).await.unwrap();
                upstream
            });
            let answered = wire.exchange(b"GET / HTTP/1.1\r\n\r\n", &Method::GET).await;
            let (_, body) = WireBody::new(wire, answered.unwrap());
            let (data, trailers, body) = read_body(body).await;
            assert_eq!(data, b"hello, world!!!", "cut at {cut} (head {head_len})");
            let trailers = trailers.unwrap_or_else(|| panic!("no trailers, cut at {cut}"));
            assert_eq!(trailers["x-sum"], "15");
            assert_eq!(trailers["x-more"], "y");
            assert!(body.into_reusable().is_some(), "cut at {cut}");
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_its_connection_is_not_reused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"[..],
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello, too long\r\n"[..],
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        ] {
            let (mut wire, mut upstream) = pair().await;
            upstream.write_all(answer).await.unwrap();
            drop(upstream);
            let answered = wire.exchange(b"GET / HTTP/1.1\r\n\r\n", &Method::GET).await;
            let (_, mut body) = WireBody::new(wire, answered.unwrap());
            let mut failed = false;
            while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
                if frame.is_err() {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "{:?}", String::from_utf8_lossy(answer));
            assert!(body.into_reusable().is_none());
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_open() {
        let (mut wire, upstream) = pair().await;
        assert!(std::future::poll_fn(|cx| Poll::Ready(wire.still_open(cx))).await);
        drop(upstream);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!std::future::poll_fn(|cx| Poll::Ready(wire.still_open(cx))).await);
        let (mut wire, mut upstream) = pair().await;
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !std::future::poll_fn(|cx| Poll::Ready(wire.still_open(cx))).await,
            "bytes nobody asked for"
        );
    }
}
