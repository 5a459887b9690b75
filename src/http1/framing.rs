//! How an HTTP/1.1 message's body is delimited (RFC 9112 §6), decided here once for every
//! reader and writer of the gateway: the lane writing its answers, the wire reading an
//! upstream's, hyper's client path checking them, and the server and pool asking whether a
//! request has a body at all.
//!
//! Request smuggling and response splitting live where two readers disagree about where a
//! body ends; one module for the lengths, the codings and the chunked format leaves the
//! gateway a single opinion to get right.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame};

use super::head::{MAX_FIELDS, lists, tokens};

/// Largest chunk-size line (with extensions) or trailer section waited for.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// How a body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: an answer to `HEAD`, 1xx, 204, 304, or a length of 0 read from an upstream.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the connection closes (read only; the lane never writes
    /// one, it chunks instead).
    UntilClose,
}

/// What a head's framing fields said, noted field by field while the head is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Declared {
    /// The one length all `Content-Length` values agree on. An error waits here until
    /// [`Declared::check`], whatever the method and status.
    length: Result<Option<u64>, &'static str>,
    /// With `Transfer-Encoding`: whether the last coding it names is `chunked`.
    chunked_last: Option<bool>,
}

impl Default for Declared {
    fn default() -> Self {
        Declared {
            length: Ok(None),
            chunked_last: None,
        }
    }
}

impl Declared {
    /// What the framing fields of a field map say (hyper's client hands over a map).
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut declared = Declared::default();
        for value in headers.get_all(header::CONTENT_LENGTH) {
            declared.note_length(value.as_bytes());
        }
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            declared.note_coding(value.as_bytes());
        }
        declared
    }

    /// Notes `name: value` if it is a framing field; `false` for any other field.
    pub(crate) fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if *name == header::CONTENT_LENGTH {
            self.note_length(value);
        } else if *name == header::TRANSFER_ENCODING {
            self.note_coding(value);
        } else {
            return false;
        }
        true
    }

    fn note_length(&mut self, value: &[u8]) {
        self.length = self.length.and_then(|seen| one_length(seen, value));
    }

    fn note_coding(&mut self, value: &[u8]) {
        let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
        self.chunked_last = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    }

    /// The declared length, if the head frames its body one way only. A length beside a
    /// coding, or lengths that are not one number, are refused (RFC 9112 §6.3 items 3 and
    /// 5): a broken upstream, or one splitting responses.
    pub(crate) fn check(&self) -> Result<Option<u64>, &'static str> {
        let length = self.length?;
        if self.chunked_last.is_some() && length.is_some() {
            return Err("both Transfer-Encoding and Content-Length");
        }
        Ok(length)
    }

    /// Whether the head has a `Content-Length` field, valid or not.
    pub(crate) fn says_length(&self) -> bool {
        !matches!(self.length, Ok(None))
    }

    /// A valid length, or `None` for none or a bad one (the lane's own answers, whose
    /// fields the gateway wrote).
    pub(crate) fn length(&self) -> Option<u64> {
        self.length.ok().flatten()
    }
}

/// `seen` and the lengths one `Content-Length` value lists, which must all agree (RFC 9112
/// §6.3, item 5); anything but digits is an error.
pub(crate) fn one_length(seen: Option<u64>, value: &[u8]) -> Result<Option<u64>, &'static str> {
    let mut length = seen;
    for digits in tokens(value) {
        let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
            .flatten()
            .ok_or("bad Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length");
        }
        length = Some(n);
    }
    Ok(length)
}

/// The length a message's `Content-Length` fields agree on; `None` without one, or with
/// one that is not a length. For what the gateway reads of a length it does not frame by:
/// the body limit and the byte count of the access log.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut declared = Declared::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        declared.note_length(value.as_bytes());
    }
    declared.length()
}

/// Whether an answer has a body at all (RFC 9110 §6.4.1): never to `HEAD`, never a 1xx,
/// 204 or 304.
pub(crate) fn response_has_body(head_request: bool, status: StatusCode) -> bool {
    !(head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Whether an answer may say a length (RFC 9110 §8.6): a 1xx or 204 never does; a 304 or an
/// answer to `HEAD` says the length a `GET` would get.
pub(crate) fn may_say_length(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT)
}

/// How an upstream's answer to a request is delimited (RFC 9112 §6.3). Its framing fields
/// are checked whatever the method and status, as hyper's client path checks them.
pub(crate) fn of_upstream_answer(
    declared: &Declared,
    method: &Method,
    status: StatusCode,
) -> Result<Framing, &'static str> {
    let length = declared.check()?;
    if !response_has_body(*method == Method::HEAD, status) {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = declared.chunked_last {
        // Chunked last is the only coding with an end of its own; with any other the body
        // ends at close and the connection with it.
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// How the lane writes an answer: its own `Content-Length` when it has a valid one, else the
/// body's known size, else chunked.
pub(crate) fn of_own_answer(
    head_request: bool,
    status: StatusCode,
    declared: &Declared,
    body_size: Option<u64>,
) -> Framing {
    if !response_has_body(head_request, status) {
        return Framing::Empty;
    }
    match declared.length().or(body_size) {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Whether a request has a body to forward. hyper has read its head: one without
/// `Content-Length` or `Transfer-Encoding`, or with a length of 0, has none (RFC 9112 §6.3
/// item 7), and hyper's body then says its stream has ended.
pub(crate) fn request_has_body<B: HttpBody>(body: &B) -> bool {
    !body.is_end_stream()
}

/// Whether a request field frames a body (`Content-Length`, `Transfer-Encoding`). A request
/// head naming neither has no body to any reader; the lane serves only such heads, and
/// leaves every other to hyper, so two readers never disagree about where a body ends.
pub(crate) fn frames_a_body(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Whether a request without a body says `Content-Length: 0`: a `POST`, `PUT` or `PATCH`
/// says it, which some upstreams require, unless it has a length already.
pub(crate) fn needs_zero_length(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !headers.contains_key(header::CONTENT_LENGTH)
}

/// Where a body's reader is: the one reader of every framing, shared by the wire's
/// connections and the fuzz target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// This many bytes of a `Content-Length` body remain.
    Length(u64),
    Chunked(Chunk),
    /// The body ends when the connection closes.
    UntilClose,
    /// Read to its end.
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    /// This many bytes of the current chunk remain.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// What one look at the buffer found.
pub(crate) enum Step {
    /// The body has ended.
    Done,
    Frame(Frame<Bytes>),
    /// The state moved; look again.
    Again,
    /// More bytes are needed.
    Read,
    /// The body is malformed: its connection cannot carry another message.
    Fail(&'static str),
}

impl Reader {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Reader::Done,
            Framing::Length(n) => Reader::Length(n),
            Framing::Chunked => Reader::Chunked(Chunk::Size),
            Framing::UntilClose => Reader::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        *self == Reader::Done
    }

    /// The bytes left to read, when known.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        match self {
            Reader::Done => Some(0),
            Reader::Length(n) => Some(*n),
            Reader::Chunked(_) | Reader::UntilClose => None,
        }
    }

    /// One look at `buf`, the bytes read after the head: a frame of the body, or what the
    /// reader needs.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Step {
        match *self {
            Reader::Done => Step::Done,
            Reader::Length(remaining) => self.length_step(buf, remaining),
            Reader::UntilClose => Self::until_close_step(buf),
            Reader::Chunked(chunk) => self.chunk_step(buf, chunk),
        }
    }

    /// Up to `n` buffered bytes, as a frame, and how many of the `n` are still to come.
    /// `None` while nothing is buffered.
    fn take(buf: &mut BytesMut, n: u64) -> Option<(Frame<Bytes>, u64)> {
        let buffered = buf.len();
        if buffered == 0 {
            return None;
        }
        let taken = usize::try_from(n).map_or(buffered, |n| n.min(buffered));
        let data = buf.split_to(taken).freeze();
        Some((Frame::data(data), n - taken as u64))
    }

    fn length_step(&mut self, buf: &mut BytesMut, remaining: u64) -> Step {
        let Some((frame, left)) = Self::take(buf, remaining) else {
            return Step::Read;
        };
        *self = match left {
            0 => Reader::Done,
            n => Reader::Length(n),
        };
        Step::Frame(frame)
    }

    fn until_close_step(buf: &mut BytesMut) -> Step {
        match Self::take(buf, u64::MAX) {
            Some((frame, _)) => Step::Frame(frame),
            None => Step::Read,
        }
    }

    fn chunk_step(&mut self, buf: &mut BytesMut, chunk: Chunk) -> Step {
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *self = Reader::Chunked(match size {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    });
                    Step::Again
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => Step::Read,
                _ => Step::Fail("bad chunk size line"),
            },
            Chunk::Data(remaining) => {
                let Some((frame, left)) = Self::take(buf, remaining) else {
                    return Step::Read;
                };
                *self = Reader::Chunked(match left {
                    0 => Chunk::DataEnd,
                    n => Chunk::Data(n),
                });
                Step::Frame(frame)
            }
            Chunk::DataEnd => match buf.get(..2) {
                Some(b"\r\n") => {
                    buf.advance(2);
                    *self = Reader::Chunked(Chunk::Size);
                    Step::Again
                }
                Some(_) => Step::Fail("chunk data longer than its size"),
                None => Step::Read,
            },
            Chunk::Trailers => self.trailers_step(buf),
        }
    }

    /// The trailer section after the last chunk: empty (a bare CRLF) nearly always.
    fn trailers_step(&mut self, buf: &mut BytesMut) -> Step {
        if buf.starts_with(b"\n") {
            // httparse would read a bare LF as the section's end; where the next message
            // starts is then in doubt.
            return Step::Fail("bare LF after the last chunk");
        }
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            *self = Reader::Done;
            return Step::Again;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let (used, trailers) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, parsed))) => (used, trailer_map(parsed)),
            Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => return Step::Read,
            _ => return Step::Fail("bad trailer section"),
        };
        buf.advance(used);
        *self = Reader::Done;
        Step::Frame(Frame::trailers(trailers))
    }
}

/// Parsed trailer fields as a map; a field `http` refuses is left out.
fn trailer_map(parsed: &[httparse::Header<'_>]) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        if let (Ok(name), Ok(value)) = (name, value) {
            trailers.append(name, value);
        }
    }
    trailers
}

/// One chunk of a chunked body, its size in lower-case hexadecimal. An empty `data` writes
/// nothing: a chunk of size 0 would end the body.
pub(crate) fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut size = [0u8; 16];
    out.put_slice(hex(data.len(), &mut size));
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk and the trailer section: the fields of `trailers` that `response`'s
/// `Trailer` fields declare, if both are given (as hyper sends them).
pub(crate) fn put_last_chunk(out: &mut BytesMut, declared: Option<(&HeaderMap, &HeaderMap)>) {
    out.put_slice(b"0\r\n");
    if let Some((response, trailers)) = declared {
        let listed = |name: &HeaderName| {
            response
                .get_all(header::TRAILER)
                .iter()
                .any(|value| lists(value.as_bytes(), name.as_str().as_bytes()))
        };
        for (name, value) in trailers.iter().filter(|(name, _)| listed(name)) {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    out.put_slice(b"\r\n");
}

/// `n` in lower-case hexadecimal, as a chunk size.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(fields: &[(&'static str, &'static str)]) -> Declared {
        Declared::of(&crate::http1::fields(fields))
    }

    #[test]
    fn an_upstream_answers_framing_follows_rfc_9112() {
        use Framing::*;
        let ok = StatusCode::OK;
        let cases = [
            (&[("content-length", "5")][..], Method::GET, ok, Length(5)),
            (&[("content-length", "0")][..], Method::GET, ok, Empty),
            (
                &[("content-length", "5, 5")][..],
                Method::GET,
                ok,
                Length(5),
            ),
            (
                &[("transfer-encoding", "chunked")][..],
                Method::GET,
                ok,
                Chunked,
            ),
            (
                &[("transfer-encoding", "gzip, chunked")][..],
                Method::GET,
                ok,
                Chunked,
            ),
            (
                &[("transfer-encoding", "gzip")][..],
                Method::GET,
                ok,
                UntilClose,
            ),
            (&[][..], Method::GET, ok, UntilClose),
            (&[("content-length", "5")][..], Method::HEAD, ok, Empty),
            (
                &[("content-length", "5")][..],
                Method::GET,
                StatusCode::NO_CONTENT,
                Empty,
            ),
            (
                &[("transfer-encoding", "chunked")][..],
                Method::GET,
                StatusCode::NOT_MODIFIED,
                Empty,
            ),
        ];
        for (fields, method, status, framing) in cases {
            let got = of_upstream_answer(&declared(fields), &method, status);
            assert_eq!(got, Ok(framing), "{fields:?} {method} {status}");
        }
    }

    #[test]
    fn two_framings_or_bad_lengths_are_refused_whatever_the_method() {
        for fields in [
            &[("content-length", "3"), ("content-length", "5")][..],
            &[("content-length", "3, 4")][..],
            &[("content-length", "-1")][..],
            &[("content-length", "+5")][..],
            &[("content-length", "0x10")][..],
            &[("content-length", "")][..],
            &[("content-length", "99999999999999999999999")][..],
            &[("transfer-encoding", "chunked"), ("content-length", "3")][..],
        ] {
            for method in [Method::GET, Method::HEAD] {
                let got = of_upstream_answer(&declared(fields), &method, StatusCode::OK);
                assert!(got.is_err(), "{fields:?} {method}");
            }
        }
    }

    #[test]
    fn the_lane_writes_its_own_length_else_the_bodys_else_chunks() {
        let ok = StatusCode::OK;
        let five = declared(&[("content-length", "5")]);
        let none = Declared::default();
        assert_eq!(of_own_answer(false, ok, &five, Some(7)), Framing::Length(5));
        assert_eq!(of_own_answer(false, ok, &none, Some(7)), Framing::Length(7));
        assert_eq!(of_own_answer(false, ok, &none, None), Framing::Chunked);
        assert_eq!(of_own_answer(true, ok, &five, None), Framing::Empty);
        let no_content = StatusCode::NO_CONTENT;
        assert_eq!(
            of_own_answer(false, no_content, &five, None),
            Framing::Empty
        );
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        let mut buf = [0u8; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(255, &mut buf), b"ff");
        assert_eq!(hex(0x1a2b3c, &mut buf), b"1a2b3c");
    }

    #[test]
    fn a_chunked_body_reads_back_as_it_was_written() {
        let mut out = BytesMut::new();
        put_chunk(&mut out, b"hello");
        put_chunk(&mut out, b"");
        put_chunk(&mut out, b", world");
        let mut response = HeaderMap::new();
        response.insert(header::TRAILER, HeaderValue::from_static("X-Sum"));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("12"));
        trailers.insert("x-undeclared", HeaderValue::from_static("no"));
        put_last_chunk(&mut out, Some((&response, &trailers)));
        let mut reader = Reader::new(Framing::Chunked);
        let (mut data, mut read_trailers) = (Vec::new(), None);
        loop {
            match reader.step(&mut out) {
                Step::Done => break,
                Step::Frame(frame) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => read_trailers = frame.into_trailers().ok(),
                },
                Step::Again => {}
                Step::Read | Step::Fail(_) => panic!("{reader:?}"),
            }
        }
        assert_eq!(data, b"hello, world");
        let read_trailers = read_trailers.unwrap();
        assert_eq!(read_trailers.len(), 1);
        assert_eq!(read_trailers["x-sum"], "12");
        assert!(out.is_empty());
    }
}
