//! The syntax of an HTTP/1.1 head as the lane and the wire read it with httparse: where its
//! parts sit in the buffer it was read into, so that once the buffer is frozen its field
//! values can be slices of it instead of copies, and how a list field's elements are split.

/// Most fields a head (or a chunked body's trailer section) may carry, as hyper's default.
/// A request with more goes to hyper, whose `max_headers` then decides; a response with
/// more is refused, as hyper's client refuses it.
pub(crate) const MAX_FIELDS: usize = 100;

/// Where a field's name and value sit in a head: offsets and lengths.
pub(crate) type Span = [u32; 4];

/// The offset of `part`, a slice of `buf`, from `buf`'s start. Heads are at most a few
/// hundred KiB, so offsets fit in 32 bits.
pub(crate) fn offset(buf: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize - buf.as_ptr() as usize) as u32
}

/// Fills `spans` with where each of `fields`, parsed from `buf`, sits in it.
pub(crate) fn field_spans(buf: &[u8], fields: &[httparse::Header<'_>], spans: &mut Vec<Span>) {
    spans.clear();
    spans.extend(fields.iter().map(|field| {
        let (name, value) = (field.name.as_bytes(), field.value);
        [
            offset(buf, name),
            name.len() as u32,
            offset(buf, value),
            value.len() as u32,
        ]
    }));
}

/// The elements of a comma-separated field value (`Connection`, `TE`, `Trailer`), trimmed.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated field value lists `token`, in any case.
pub(crate) fn lists(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}
