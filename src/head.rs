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
