//! How the mock talks like api.weixin.qq.com: compact JSON in WeChat's field order with
//! `\/`-escaped slashes and unescaped control bytes, errmsg texts with an era-specific
//! suffix, and the HTTP responses (always 200 for errcode errors) that carry them.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::faults::{ContentTypeVariant, ErrmsgStyle, Escapes};
use super::store::random_alnum;

pub type Body = Full<Bytes>;

/// A JSON object written field by field, in the order WeChat writes them.
pub struct WxJson {
    buf: String,
}

impl WxJson {
    pub fn new() -> Self {
        Self {
            buf: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        push_string(&mut self.buf, key);
        self.buf.push(':');
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_string(&mut self.buf, value);
        self
    }

    /// `key` with a value already written as JSON (`\u` escapes, lone surrogates).
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    pub fn num(mut self, key: &str, value: i64) -> Self {
        self.key(key);
        self.buf.push_str(&value.to_string());
        self
    }

    pub fn strs(mut self, key: &str, values: &[&str]) -> Self {
        self.key(key);
        self.buf.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push(',');
            }
            push_string(&mut self.buf, value);
        }
        self.buf.push(']');
        self
    }

    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

impl Default for WxJson {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a JSON string the way WeChat does: `/` as `\/`, and control bytes left raw
/// (real nicknames arrive with unescaped 0x07/0x14, which strict parsers reject).
fn push_string(buf: &mut String, value: &str) {
    buf.push('"');
    for c in value.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '/' => buf.push_str("\\/"),
            other => buf.push(other),
        }
    }
    buf.push('"');
}

/// `json` with every non-ASCII character written as `\u` escapes (UTF-16 units), as
/// WeChat's older endpoints and PHP's `json_encode` write them; with `cut_emoji`, an astral
/// character keeps only its high surrogate, which no strict parser accepts. Keys and
/// syntax are ASCII, so only string contents change.
pub fn escape_non_ascii(json: &str, cut_emoji: bool) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
            continue;
        }
        let mut units = [0u16; 2];
        let units = c.encode_utf16(&mut units);
        let keep = if cut_emoji { &units[..1] } else { &units[..] };
        for unit in keep {
            out.push_str(&format!("\\u{unit:04x}"));
        }
    }
    out
}

/// The body as the chosen [`Escapes`] writes it.
pub fn with_escapes(json: String, escapes: Escapes) -> String {
    match escapes {
        Escapes::Raw => json,
        Escapes::Ascii => escape_non_ascii(&json, false),
        Escapes::CutEmoji => escape_non_ascii(&json, true),
    }
}

/// The English errmsg WeChat sends for an errcode.
pub fn errcode_text(errcode: i64) -> &'static str {
    match errcode {
        -1 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40029 => "invalid code",
        40030 => "invalid refresh_token",
        40125 => "invalid appsecret",
        40163 => "code been used",
        40164 => "invalid ip, not in whitelist",
        41001 => "access_token missing",
        41002 => "appid missing",
        41003 => "refresh_token missing",
        41004 => "appsecret missing",
        41008 => "missing code",
        41009 => "missing openid",
        42001 => "access_token expired",
        42002 => "refresh_token expired",
        42003 => "code expired",
        42007 => "access_token and refresh_token exception",
        43002 => "require POST method",
        43003 => "require https",
        40097 => "invalid args",
        89503 => "此次调用需要管理员确认，请耐心等候",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        47001 => "data format error",
        48001 => "api unauthorized",
        50001 => "user unauthorized",
        _ => "unknown error",
    }
}

/// errmsg with the suffix of the chosen era; the rid starts with the Unix time in hex.
pub fn errmsg(errcode: i64, style: ErrmsgStyle, now: u64) -> String {
    let text = errcode_text(errcode);
    match style {
        ErrmsgStyle::None => text.to_owned(),
        ErrmsgStyle::Rid => {
            let (a, b): (u32, u32) = (rand::random(), rand::random());
            format!("{text}, rid: {:08x}-{a:08x}-{b:08x}", now & 0xffff_ffff)
        }
        ErrmsgStyle::Hints => format!("{text}, hints: [ req_id: {} ]", random_alnum(14)),
        ErrmsgStyle::Hint => format!("{text} hint: [{}!]", random_alnum(14)),
    }
}

pub fn error_body(errcode: i64, style: ErrmsgStyle, now: u64) -> String {
    WxJson::new()
        .num("errcode", errcode)
        .str("errmsg", &errmsg(errcode, style, now))
        .finish()
}

/// A JSON API answer: always HTTP 200, Content-Type as configured.
pub fn api_response(body: String, content_type: ContentTypeVariant) -> Response<Body> {
    respond(
        StatusCode::OK,
        content_type.header_value(),
        Bytes::from(body),
    )
}

pub fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn html(body: String) -> Response<Body> {
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from(body),
    )
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    respond(status, "application/json", Bytes::from(value.to_string()))
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

/// A 302 to `location`, which the caller has made header-safe.
pub fn redirect(location: &str) -> Response<Body> {
    let mut response = respond(StatusCode::FOUND, "text/html; charset=utf-8", Bytes::new());
    match HeaderValue::from_str(location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    response
}

/// What an nginx in front of WeChat answers when it fails.
pub fn gateway_error(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let body = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    respond(status, "text/html", Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_write_utf16_units_and_cut_emoji_keeps_only_the_high_surrogate() {
        let json = r#"{"nickname":"韩🌸","city":"a\/b"}"#;
        assert_eq!(with_escapes(json.into(), Escapes::Raw), json);
        let ascii = with_escapes(json.into(), Escapes::Ascii);
        assert_eq!(ascii, r#"{"nickname":"\u97e9\ud83c\udf38","city":"a\/b"}"#);
        let back: serde_json::Value = serde_json::from_str(&ascii).unwrap();
        assert_eq!(back["nickname"], "韩🌸");
        let cut = with_escapes(json.into(), Escapes::CutEmoji);
        assert_eq!(cut, r#"{"nickname":"\u97e9\ud83c","city":"a\/b"}"#);
        assert!(
            serde_json::from_str::<serde_json::Value>(&cut).is_err(),
            "strict parsers refuse it"
        );
    }

    #[test]
    fn json_keeps_field_order_escapes_slashes_and_leaves_control_bytes_raw() {
        let body = WxJson::new()
            .str("openid", "o1")
            .str("nickname", "阿\u{7}\"铃\\")
            .num("sex", 0)
            .str("headimgurl", "https://thirdwx.qlogo.cn/x/132")
            .strs("privilege", &[])
            .finish();
        assert_eq!(
            body,
            "{\"openid\":\"o1\",\"nickname\":\"阿\u{7}\\\"铃\\\\\",\"sex\":0,\"headimgurl\":\"https:\\/\\/thirdwx.qlogo.cn\\/x\\/132\",\"privilege\":[]}"
        );
    }

    #[test]
    fn errmsg_suffix_styles_match_the_observed_eras() {
        let now = 0x61a9_69fa;
        assert_eq!(errmsg(40029, ErrmsgStyle::None, now), "invalid code");
        let rid = errmsg(40029, ErrmsgStyle::Rid, now);
        assert!(rid.starts_with("invalid code, rid: 61a969fa-"), "{rid}");
        assert_eq!(rid.len(), "invalid code, rid: ".len() + 26);
        assert!(
            errmsg(40163, ErrmsgStyle::Hints, now).starts_with("code been used, hints: [ req_id: ")
        );
        assert!(errmsg(42001, ErrmsgStyle::Hint, now).starts_with("access_token expired hint: ["));
        let body = error_body(40029, ErrmsgStyle::None, now);
        assert_eq!(body, r#"{"errcode":40029,"errmsg":"invalid code"}"#);
    }
}
