//! The server's own HTTP/1.1 for the request nearly all traffic is: a request without a body
//! and without an upgrade. Everything else — a body, an upgrade, HTTP/1.0, a head httparse
//! refuses or that outgrows hyper's buffer — is left, byte for byte, to hyper, which serves
//! the connection from there until it next parks.
//!
//! Why: under callgrind hyper's server was a quarter of a logged-in request (its dispatcher,
//! the per-request header-read timer, the boxed service future), and this is where wxgate's
//! time went beyond nginx's. The head is parsed by httparse, as in hyper; what is decided here
//! is which requests are simple enough, and the response is written with `framing`'s
//! decisions and without `hop`'s fields.
//!
//! Request smuggling needs two readers to disagree about where a body ends. A request that
//! names no length and no coding has none, to every reader; one that names either goes to
//! hyper, as does any head that is not plainly valid.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::ClientBody;
use super::framing::{self, Declared, Framing};
use super::head::{MAX_FIELDS, Span, field_spans, offset};
use super::hop::{self, Token};

/// Bytes of a response gathered before they are written: the head and every body frame
/// ready at once go out in one write up to this size.
const WRITE_AT: usize = 64 * 1024;

/// What the lane makes of the bytes at the front of its buffer.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "matched as soon as it is returned; boxed, every request would cost an allocation"
)]
pub enum Next {
    /// A request the lane serves, taken out of the buffer, and what it asked of the answer.
    Serve {
        request: Request<ClientBody>,
        asked: Asked,
    },
    /// The head is not complete yet.
    Partial,
    /// Not the lane's: hyper reads it from the same bytes, which are left untouched.
    Hyper,
}

/// The request whose complete head starts `buf`, if the lane serves it. Field values share
/// the head's bytes instead of being copied; `spans` is scratch space kept per connection.
pub fn take_request(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Next {
    // Uninitialised slots, as hyper's: a hundred empty fields would be 3 KiB to clear.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Next::Partial,
        Err(_) => return Next::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Next::Hyper;
    };
    // Origin form only: an absolute or authority target, `*` and CONNECT are hyper's.
    if !target.starts_with('/') || method == "CONNECT" {
        return Next::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Next::Hyper;
    };
    let mut asked = Asked {
        head: method == Method::HEAD,
        ..Asked::default()
    };
    for field in parsed.headers.iter() {
        if !asked.note(field.name.as_bytes(), field.value) {
            return Next::Hyper;
        }
    }
    // The head is no longer than hyper's buffer (`Protocols`).
    let target_span = (offset(buf, target.as_bytes()) as usize, target.len());
    field_spans(buf, parsed.headers, spans);
    let head = buf.split_to(len).freeze();
    let Some((uri, headers)) = build(&head, target_span, spans) else {
        // Not a URI, or not a field name: hyper answers 400, from the head as it came.
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Next::Hyper;
    };
    let mut request = Request::new(ClientBody::None);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Next::Serve { request, asked }
}

/// The target and the field map, sharing `head`'s bytes; `None` if either is not valid.
/// httparse has refused every byte a value may not hold, so values are checked again only
/// because `http` cannot be told so without `unsafe`.
fn build(head: &Bytes, (start, len): (usize, usize), spans: &[Span]) -> Option<(Uri, HeaderMap)> {
    let uri = Uri::from_maybe_shared(head.slice(start..start + len)).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &[name, name_len, value, value_len] in spans {
        let (name, value) = (name as usize, value as usize);
        let name = HeaderName::from_bytes(&head[name..name + name_len as usize]).ok()?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value..value + value_len as usize)).ok()?;
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// What a request asked of its answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// A `HEAD`: the answer has no body.
    pub head: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `TE: trailers`: a chunked answer may end with its trailer fields.
    pub trailers: bool,
}

impl Asked {
    /// Notes one request field; `false` if it takes the request out of the lane: a body's
    /// framing, an upgrade, or an `Expect`.
    fn note(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |other: &HeaderName| name.eq_ignore_ascii_case(other.as_str().as_bytes());
        if framing::frames_a_body(name) || is(&header::UPGRADE) || is(&header::EXPECT) {
            return false;
        }
        if is(&header::CONNECTION) {
            for token in hop::connection(value) {
                if token == Token::Upgrade {
                    return false;
                }
                self.close |= token == Token::Close;
            }
        } else if is(&header::TE) {
            self.trailers |= hop::accepts_trailers(value);
        }
        true
    }
}

/// Writes `response` for a request, and says whether the connection may carry another.
/// `out` is the connection's write buffer, left empty.
pub async fn write_response<I, B>(
    io: &mut I,
    out: &mut BytesMut,
    response: Response<B>,
    asked: Asked,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes>,
{
    let (parts, body) = response.into_parts();
    let said = encode_fields(&parts, out);
    let body_size = body.size_hint().exact();
    let framing = framing::of_own_answer(asked.head, parts.status, &said.declared, body_size);
    let close = asked.close || said.close;
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::UntilClose => None,
        Framing::Empty if !framing::may_say_length(parts.status) => None,
        // A `HEAD`'s or 304's answer says the length a `GET` would get, as hyper's does.
        Framing::Empty if asked.head && !said.declared.says_length() => {
            body_size.filter(|&n| n > 0)
        }
        Framing::Empty => said.declared.length(),
    };
    end_head(framing, length, close, said.date, out);
    let whole = match framing {
        Framing::Empty => true,
        _ => {
            // Only fields the response declares in `Trailer`, as hyper sends them.
            let declared = (asked.trailers && said.trailer).then_some(&parts.headers);
            write_body(io, out, body, framing, declared).await?
        }
    };
    io.write_all(out).await?;
    out.clear();
    io.flush().await?;
    Ok(whole && !close)
}

/// What a response's own fields said, noted while they were written.
#[derive(Debug)]
struct Said {
    /// Its framing fields.
    declared: Declared,
    /// `Connection: close`.
    close: bool,
    date: bool,
    trailer: bool,
}

/// The status line and the response's fields, in one pass that notes what they say of the
/// framing. The framing and connection fields are the lane's own to write (`end_head`); the
/// proxy has already removed every other hop-by-hop field from an upstream's answer.
fn encode_fields(parts: &http::response::Parts, out: &mut BytesMut) -> Said {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let mut said = Said {
        declared: Declared::default(),
        close: false,
        date: false,
        trailer: false,
    };
    for (name, value) in &parts.headers {
        if said.declared.note(name, value.as_bytes()) {
            continue;
        }
        if *name == header::CONNECTION {
            said.close |= hop::connection(value.as_bytes()).any(|t| t == Token::Close);
            continue;
        }
        if hop::is_hop_by_hop(name) {
            continue;
        }
        said.date |= *name == header::DATE;
        said.trailer |= *name == header::TRAILER;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    said
}

/// The framing and connection fields, `Date` if the response had none, and the head's end.
fn end_head(framing: Framing, length: Option<u64>, close: bool, dated: bool, out: &mut BytesMut) {
    if let Some(n) = length {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa::Buffer::new().format(n).as_bytes());
        out.put_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !dated {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

thread_local! {
    /// The current second's HTTP date, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [b' '; 29])) };
}

fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *cached = second;
            }
        }
        out.put_slice(text);
    });
}

/// Writes the body after the head in `out`: frames ready at once join the head in one
/// write; the rest follow as they come. A chunked body ends with the trailer fields
/// `declared` names in its `Trailer` fields, if given. `Ok(false)` if the body failed or did
/// not match its length, so the connection must close after it.
async fn write_body<I, B>(
    io: &mut I,
    out: &mut BytesMut,
    body: B,
    framing: Framing,
    declared: Option<&HeaderMap>,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut sent: u64 = 0;
    let mut trailers = None;
    loop {
        let ready = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let frame = match ready {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Nothing more yet: what is gathered goes out before the wait.
                io.write_all(out).await?;
                out.clear();
                io.flush().await?;
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Ok(false),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            },
        };
        match framing {
            Framing::Length(n) => {
                let room = n - sent;
                let take = room.min(data.len() as u64);
                out.put_slice(&data[..take as usize]);
                sent += take;
                if take < data.len() as u64 {
                    return Ok(false);
                }
            }
            Framing::Chunked => framing::put_chunk(out, &data),
            Framing::Empty | Framing::UntilClose => {}
        }
        if out.len() >= WRITE_AT {
            io.write_all(out).await?;
            out.clear();
        }
    }
    Ok(match framing {
        Framing::Length(n) => sent == n,
        Framing::Chunked => {
            framing::put_last_chunk(out, declared.zip(trailers.as_ref()));
            true
        }
        Framing::Empty | Framing::UntilClose => true,
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Frame;
    use http_body_util::{Full, StreamBody};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn take(text: &str) -> (Next, BytesMut) {
        let mut buf = BytesMut::from(text);
        let next = take_request(&mut buf, &mut Vec::new());
        (next, buf)
    }

    #[test]
    fn a_whole_bodiless_head_is_taken_and_what_follows_is_left() {
        let (next, rest) = take(
            "GET /a/b?c=d HTTP/1.1\r\nHost: gw.test\r\nCookie: x=1\r\nCookie: y=2\r\n\r\nGET /next",
        );
        let Next::Serve { request, asked } = next else {
            panic!("{next:?}")
        };
        assert!(!asked.close && !asked.head && !asked.trailers);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "gw.test");
        let cookies: Vec<_> = request.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["x=1", "y=2"]);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn what_the_request_asks_of_its_answer_is_read_and_the_fields_stay_for_the_gate_to_clean() {
        let (next, _) = take(
            "HEAD / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\nTE: Trailers\r\n\r\n",
        );
        let Next::Serve { request, asked } = next else {
            panic!("{next:?}")
        };
        assert!(asked.close && asked.head && asked.trailers);
        assert!(request.headers().contains_key("connection"));
    }

    #[test]
    fn anything_but_a_plain_request_is_left_whole_for_hyper() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\nhello",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n",
            // httparse takes it, `Uri` does not: hyper answers 400 from the whole head.
            "GET /a<b HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
            "\0GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let (next, rest) = take(head);
            assert!(matches!(next, Next::Hyper), "{head:?}: {next:?}");
            assert_eq!(&rest[..], head.as_bytes(), "{head:?}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-Field: 1\r\n".repeat(MAX_FIELDS + 1)
        );
        assert!(matches!(take(&many).0, Next::Hyper));
    }

    #[test]
    fn a_head_still_arriving_is_waited_for() {
        // Empty lines before a request line are skipped, as RFC 9112 §2.2 allows.
        for head in ["GET / HTTP/1.1\r\nHost: a\r\n", "GET /a", "G", "\r\n\r\n"] {
            let (next, rest) = take(head);
            assert!(matches!(next, Next::Partial), "{head:?}: {next:?}");
            assert_eq!(&rest[..], head.as_bytes());
        }
    }

    async fn written<B: HttpBody<Data = Bytes>>(
        response: Response<B>,
        head: bool,
        close: bool,
    ) -> (String, bool) {
        let mut wire = Vec::new();
        let mut out = BytesMut::new();
        let asked = Asked {
            head,
            close,
            ..Asked::default()
        };
        let reusable = write_response(&mut wire, &mut out, response, asked)
            .await
            .unwrap();
        assert!(out.is_empty());
        (String::from_utf8(wire).unwrap(), reusable)
    }

    fn full(body: &'static str) -> Full<Bytes> {
        Full::new(Bytes::from_static(body.as_bytes()))
    }

    #[tokio::test]
    async fn a_whole_body_goes_with_its_length_and_a_date() {
        let (text, reusable) = written(Response::new(full("hello")), false, false).await;
        assert!(reusable);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 5\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\nhello"), "{text}");
        assert!(!text.contains("connection"), "{text}");
    }

    #[tokio::test]
    async fn the_responses_own_fields_go_through_but_framing_and_connection_fields_are_the_lanes() {
        let response = Response::builder()
            .status(404)
            .header("date", "Tue, 24 Nov 2026 10:00:00 GMT")
            .header("content-length", "5")
            .header("connection", "x-private")
            .header("transfer-encoding", "chunked")
            .header(
                "x-private",
                "kept: only Connection of a request names fields to drop",
            )
            .body(full("gone!"))
            .unwrap();
        let (text, reusable) = written(response, false, false).await;
        assert!(reusable);
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\ndate: Tue, 24 Nov 2026 10:00:00 GMT\r\n\
             x-private: kept: only Connection of a request names fields to drop\r\n\
             content-length: 5\r\n\r\ngone!"
        );
    }

    #[tokio::test]
    async fn a_head_request_gets_the_length_a_get_would_and_no_body() {
        let response = Response::builder()
            .header("content-length", "1234")
            .body(full(""))
            .unwrap();
        let (text, reusable) = written(response, true, false).await;
        assert!(reusable);
        assert!(text.contains("\r\ncontent-length: 1234\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn no_content_has_neither_body_nor_length() {
        let response = Response::builder()
            .status(204)
            .header("content-length", "0")
            .body(full(""))
            .unwrap();
        let (text, _) = written(response, false, false).await;
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked() {
        let frames = ["ab", "", "cdefghijklmnopq"]
            .map(|part| Ok::<_, Infallible>(Frame::data(Bytes::from_static(part.as_bytes()))));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (text, reusable) = written(Response::new(body), false, false).await;
        assert!(reusable);
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\nf\r\ncdefghijklmnopq\r\n0\r\n\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn declared_trailers_end_a_chunked_body_when_the_client_asked_for_them() {
        let answer = |trailers: bool| async move {
            let mut fields = HeaderMap::new();
            fields.insert("x-sum", HeaderValue::from_static("12"));
            fields.insert("x-undeclared", HeaderValue::from_static("no"));
            let body = StreamBody::new(futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"hello"))),
                Ok(Frame::trailers(fields)),
            ]));
            let response = Response::builder()
                .header("trailer", "X-Sum")
                .body(body)
                .unwrap();
            let asked = Asked {
                trailers,
                ..Asked::default()
            };
            let mut wire = Vec::new();
            let mut out = BytesMut::new();
            assert!(
                write_response(&mut wire, &mut out, response, asked)
                    .await
                    .unwrap()
            );
            String::from_utf8(wire).unwrap()
        };
        let text = answer(true).await;
        assert!(
            text.ends_with("\r\n5\r\nhello\r\n0\r\nx-sum: 12\r\n\r\n"),
            "{text}"
        );
        let text = answer(false).await;
        assert!(text.ends_with("\r\n5\r\nhello\r\n0\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_body_that_fails_or_overruns_its_length_closes_the_connection() {
        let failing = StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("upstream went away"),
        ]));
        let response = Response::builder()
            .header("content-length", "10")
            .body(failing)
            .unwrap();
        let (text, reusable) = written(response, false, false).await;
        assert!(!reusable);
        assert!(text.ends_with("\r\n\r\nab"), "{text}");

        let long = Response::builder()
            .header("content-length", "3")
            .body(full("abcdef"))
            .unwrap();
        let (text, reusable) = written(long, false, false).await;
        assert!(!reusable);
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }

    #[tokio::test]
    async fn a_close_asked_for_by_either_side_is_said_and_ends_reuse() {
        let (text, reusable) = written(Response::new(full("x")), false, true).await;
        assert!(!reusable);
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        let response = Response::builder()
            .header("connection", "close")
            .body(full("x"))
            .unwrap();
        let (text, reusable) = written(response, false, false).await;
        assert!(!reusable);
        assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn the_head_goes_out_before_a_body_that_is_not_ready() {
        let (send, receive) = tokio::sync::oneshot::channel::<Bytes>();
        let body = StreamBody::new(futures_util::stream::once(async move {
            Ok::<_, Infallible>(Frame::data(receive.await.unwrap()))
        }));
        let (mut client, mut server) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            let mut out = BytesMut::new();
            let asked = Asked::default();
            write_response(&mut server, &mut out, Response::new(body), asked).await
        });
        let mut head = vec![0u8; 4096];
        let n = client.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        send.send(Bytes::from_static(b"late")).unwrap();
        assert!(writer.await.unwrap().unwrap());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"4\r\nlate\r\n0\r\n\r\n");
    }
}
