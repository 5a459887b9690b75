//! Where the parts of an HTTP/1.1 head sit in the buffer it was read into, so that once the
//! buffer is frozen its field values can be slices of it instead of copies. Shared by the
//! upstream client (`proxy::wire`) and the server's lane (`server::lane`), which parse heads
//! with httparse.

/// Where a field's name and value sit in a head: offsets and lengths.
pub type Span = [u32; 4];

/// The offset of `part`, a slice of `buf`, from `buf`'s start. Heads are at most a few
/// hundred KiB, so offsets fit in 32 bits.
pub fn offset(buf: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize - buf.as_ptr() as usize) as u32
}

/// Fills `spans` with where each of `fields`, parsed from `buf`, sits in it.
pub fn field_spans(buf: &[u8], fields: &[httparse::Header<'_>], spans: &mut Vec<Span>) {
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
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated field value lists `token`, in any case.
pub fn lists(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// `seen` and the lengths one `Content-Length` value lists, which must all agree (RFC 9112
/// §6.3, item 5); anything but digits is an error.
pub fn one_length(seen: Option<u64>, value: &[u8]) -> Result<Option<u64>, &'static str> {
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
