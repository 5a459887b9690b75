//! Reading WeChat's answers: tolerant of what WeChat really sends (any Content-Type, raw
//! control bytes inside strings, `\/`, private-use emoji, unknown fields) and strict on
//! what matters (errcode first, then the fields we need, with their types).

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{Map, Value};

use super::error::Malformed;
use super::model::{AppToken, JsapiTicket, TokenGrant, UserInfo};
use crate::Secret;

/// An answer that parsed: either a JSON object without a non-zero errcode, or an errcode.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(Map<String, Value>),
    Err { errcode: i64, errmsg: String },
}

/// The longest errmsg kept for errors and logs; WeChat's are far shorter.
const ERRMSG_MAX_CHARS: usize = 200;

/// Escapes raw control bytes (< 0x20) that appear inside JSON strings, which serde_json
/// rejects and WeChat sends unescaped in nicknames. Bytes outside strings are untouched.
pub(crate) fn sanitize(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut in_string = false;
    let mut escaped = false;
    for (at, &byte) in body.iter().enumerate() {
        if in_string && byte < 0x20 {
            let buffer = out.get_or_insert_with(|| body[..at].to_vec());
            // After a backslash the escape is already open: complete it as \u00XX.
            let prefix = if escaped { "" } else { "\\" };
            buffer.extend_from_slice(format!("{prefix}u{byte:04x}").as_bytes());
            escaped = false;
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        }
        if let Some(buffer) = out.as_mut() {
            buffer.push(byte);
        }
    }
    match out {
        Some(buffer) => Cow::Owned(buffer),
        None => Cow::Borrowed(body),
    }
}

/// Replaces `\uXXXX` escapes of lone UTF-16 surrogates (a high one not followed by a low
/// one, or a low one alone) with `\ufffd`. WeChat cuts nicknames inside emoji and sends
/// `"\ud83d"`; serde_json refuses the whole document for it, wechatpy and silenceper read on.
pub(crate) fn repair_surrogates(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut in_string = false;
    let mut at = 0;
    while at < body.len() {
        let byte = body[at];
        if !in_string {
            in_string = byte == b'"';
        } else if byte == b'"' {
            in_string = false;
        } else if byte == b'\\' {
            let unit = escaped_unit(body, at);
            let lone = match unit {
                Some(0xD800..=0xDBFF) => {
                    !matches!(escaped_unit(body, at + 6), Some(0xDC00..=0xDFFF))
                }
                Some(0xDC00..=0xDFFF) => true,
                _ => false,
            };
            let pair = matches!(unit, Some(0xD800..=0xDBFF)) && !lone;
            let len = if pair {
                12
            } else if unit.is_some() {
                6
            } else {
                2
            };
            let end = (at + len).min(body.len());
            if lone {
                out.get_or_insert_with(|| body[..at].to_vec())
                    .extend_from_slice(b"\\ufffd");
            } else if let Some(buffer) = out.as_mut() {
                buffer.extend_from_slice(&body[at..end]);
            }
            at = end;
            continue;
        }
        if let Some(buffer) = out.as_mut() {
            buffer.push(byte);
        }
        at += 1;
    }
    match out {
        Some(buffer) => Cow::Owned(buffer),
        None => Cow::Borrowed(body),
    }
}

/// The code unit of a `\uXXXX` escape starting at `at`, if there is one.
fn escaped_unit(body: &[u8], at: usize) -> Option<u32> {
    let escape = body.get(at..at + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&escape[2..]).ok()?;
    u32::from_str_radix(hex, 16).ok()
}

/// Parses a body into a `Reply`, looking only at `errcode` to tell success from failure.
/// Invalid UTF-8 and lone surrogates become U+FFFD: one broken nickname never fails a login.
pub(crate) fn parse_reply(body: &[u8]) -> Result<Reply, Malformed> {
    let sanitized = sanitize(body);
    let repaired = repair_surrogates(&sanitized);
    let text = String::from_utf8_lossy(&repaired);
    let text = text.trim_start_matches('\u{feff}');
    let value: Value =
        serde_json::from_str(text).map_err(|error| Malformed::NotJson(error.to_string()))?;
    let Value::Object(map) = value else {
        return Err(Malformed::NotObject);
    };
    match errcode(&map)? {
        Some(code) if code != 0 => Ok(Reply::Err {
            errcode: code,
            errmsg: errmsg(&map),
        }),
        _ => Ok(Reply::Ok(map)),
    }
}

fn errcode(map: &Map<String, Value>) -> Result<Option<i64>, Malformed> {
    match map.get("errcode") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(Malformed::WrongType("errcode")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Malformed::WrongType("errcode")),
        Some(_) => Err(Malformed::WrongType("errcode")),
    }
}

/// WeChat's errmsg, shortened and stripped of control characters so it is safe to log.
fn errmsg(map: &Map<String, Value>) -> String {
    let raw = map.get("errmsg").and_then(Value::as_str).unwrap_or("");
    raw.chars()
        .filter(|c| !c.is_control())
        .take(ERRMSG_MAX_CHARS)
        .collect()
}

/// A `/sns/auth` answer is only a status: `errcode: 0` (whatever else is present) is success.
pub(crate) fn check_ok(map: &Map<String, Value>) -> Result<(), Malformed> {
    match errcode(map)? {
        Some(0) => Ok(()),
        _ => Err(Malformed::Missing("errcode")),
    }
}

pub(crate) fn token_grant(map: &Map<String, Value>) -> Result<TokenGrant, Malformed> {
    Ok(TokenGrant {
        access_token: Secret::new(required(map, "access_token")?),
        expires_in: Duration::from_secs(expires_in(map)?),
        refresh_token: Secret::new(required(map, "refresh_token")?),
        openid: required(map, "openid")?,
        scope: text(map, "scope")?,
        unionid: optional(map, "unionid")?,
        is_snapshotuser: flag(map, "is_snapshotuser")?,
    })
}

pub(crate) fn user_info(map: &Map<String, Value>) -> Result<UserInfo, Malformed> {
    Ok(UserInfo {
        openid: required(map, "openid")?,
        nickname: text(map, "nickname")?,
        sex: sex(map)?,
        province: text(map, "province")?,
        city: text(map, "city")?,
        country: text(map, "country")?,
        headimgurl: text(map, "headimgurl")?,
        privilege: privilege(map)?,
        unionid: optional(map, "unionid")?,
    })
}

pub(crate) fn app_token(map: &Map<String, Value>) -> Result<AppToken, Malformed> {
    Ok(AppToken {
        access_token: Secret::new(required(map, "access_token")?),
        expires_in: Duration::from_secs(expires_in(map)?),
    })
}

pub(crate) fn jsapi_ticket(map: &Map<String, Value>) -> Result<JsapiTicket, Malformed> {
    Ok(JsapiTicket {
        ticket: Secret::new(required(map, "ticket")?),
        expires_in: Duration::from_secs(expires_in(map)?),
    })
}

/// A string field that must be present and non-empty.
fn required(map: &Map<String, Value>, key: &'static str) -> Result<String, Malformed> {
    match map.get(key) {
        None | Some(Value::Null) => Err(Malformed::Missing(key)),
        Some(Value::String(s)) if s.is_empty() => Err(Malformed::Empty(key)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Malformed::WrongType(key)),
    }
}

/// A string field where absence means "".
fn text(map: &Map<String, Value>, key: &'static str) -> Result<String, Malformed> {
    Ok(optional(map, key)?.unwrap_or_default())
}

/// A string field where absence, null and "" all mean "not given".
fn optional(map: &Map<String, Value>, key: &'static str) -> Result<Option<String>, Malformed> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Malformed::WrongType(key)),
    }
}

/// An unsigned number that some clients have seen as a numeric string.
fn number(map: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, Malformed> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(Malformed::WrongType(key)),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Malformed::WrongType(key)),
        Some(_) => Err(Malformed::WrongType(key)),
    }
}

/// WeChat documents 7200 s; a missing value is read as that rather than as "never expires".
fn expires_in(map: &Map<String, Value>) -> Result<u64, Malformed> {
    Ok(number(map, "expires_in")?.unwrap_or(7200))
}

fn flag(map: &Map<String, Value>, key: &'static str) -> Result<bool, Malformed> {
    match map.get(key) {
        Some(Value::Bool(b)) => Ok(*b),
        _ => Ok(number(map, key)?.is_some_and(|n| n != 0)),
    }
}

fn sex(map: &Map<String, Value>) -> Result<u8, Malformed> {
    let raw = number(map, "sex")?.unwrap_or(0);
    u8::try_from(raw).map_err(|_| Malformed::WrongType("sex"))
}

fn privilege(map: &Map<String, Value>) -> Result<Vec<String>, Malformed> {
    match map.get("privilege") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect()),
        Some(_) => Err(Malformed::WrongType("privilege")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &[u8]) -> Map<String, Value> {
        match parse_reply(body) {
            Ok(Reply::Ok(map)) => map,
            other => panic!(
                "expected success for {:?}: {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    #[test]
    fn sanitize_escapes_only_control_bytes_inside_strings() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"{\"a\":\"x\x07y\"}", b"{\"a\":\"x\\u0007y\"}"),
            (b"{\"a\":\"\x14\"}", b"{\"a\":\"\\u0014\"}"),
            (b"{\n\t\"a\": \"b\"\r\n}", b"{\n\t\"a\": \"b\"\r\n}"),
            (b"{\"a\":\"q\\\"\x07\"}", b"{\"a\":\"q\\\"\\u0007\"}"),
            (b"{\"a\":\"\\\\\x08\"}", b"{\"a\":\"\\\\\\u0008\"}"),
            (b"{\"a\":\"line\nbreak\"}", b"{\"a\":\"line\\u000abreak\"}"),
            (b"{\"a\":\"bad\\\x07\"}", b"{\"a\":\"bad\\u0007\"}"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                sanitize(input).as_ref(),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(matches!(sanitize(b"{\"a\":1}"), Cow::Borrowed(_)));
    }

    #[test]
    fn tricky_but_real_bodies_parse() {
        let body = "{\"openid\":\"oAbc\",\"nickname\":\"阿\u{7}铃\u{14}\",\"sex\":0,\"province\":\"\",\"city\":\"\",\"country\":\"\",\"headimgurl\":\"https:\\/\\/thirdwx.qlogo.cn\\/mmopen\\/x\\/132\",\"privilege\":[],\"language\":\"zh_CN\",\"new_field\":{\"x\":[1,2]}}";
        let info = user_info(&ok(body.as_bytes())).unwrap();
        assert_eq!(info.nickname, "阿\u{7}铃\u{14}");
        assert_eq!(info.headimgurl, "https://thirdwx.qlogo.cn/mmopen/x/132");
        assert_eq!(info.unionid, None);

        let pua = "{\"openid\":\"o1\",\"nickname\":\"\u{E415}\u{E13C}老王😀\",\"privilege\":[\"chinaunicom\"],\"unionid\":\"oU1\"}";
        let info = user_info(&ok(pua.as_bytes())).unwrap();
        assert_eq!(info.nickname, "\u{E415}\u{E13C}老王😀");
        assert_eq!(info.privilege, vec!["chinaunicom".to_owned()]);
        assert_eq!(info.unionid.as_deref(), Some("oU1"));

        let bom = "\u{feff}{\"openid\":\"o2\"}";
        assert_eq!(user_info(&ok(bom.as_bytes())).unwrap().openid, "o2");
    }

    #[test]
    fn token_grant_reads_snapshot_and_unionid_and_ignores_unknown_fields() {
        let body = br#"{"access_token":"93_AT","expires_in":7200,"refresh_token":"93_RT","openid":"ojHK","scope":"snsapi_userinfo","unionid":"oLDe","is_snapshotuser":1,"future":true}"#;
        let grant = token_grant(&ok(body)).unwrap();
        assert_eq!(grant.access_token.expose(), "93_AT");
        assert_eq!(grant.expires_in, Duration::from_secs(7200));
        assert!(grant.is_snapshotuser && grant.allows_userinfo());
        assert_eq!(grant.unionid.as_deref(), Some("oLDe"));

        let base = br#"{"access_token":"A","expires_in":"7200","refresh_token":"R","openid":"o123","scope":"snsapi_base"}"#;
        let grant = token_grant(&ok(base)).unwrap();
        assert!(!grant.is_snapshotuser && !grant.allows_userinfo());
        assert_eq!(grant.unionid, None);
    }

    #[test]
    fn token_grant_without_usable_openid_or_token_is_malformed() {
        let cases: &[(&[u8], Malformed)] = &[
            (
                br#"{"access_token":"A","refresh_token":"R","scope":"snsapi_base"}"#,
                Malformed::Missing("openid"),
            ),
            (
                br#"{"access_token":"A","refresh_token":"R","openid":""}"#,
                Malformed::Empty("openid"),
            ),
            (
                br#"{"access_token":"A","refresh_token":"R","openid":123}"#,
                Malformed::WrongType("openid"),
            ),
            (
                br#"{"refresh_token":"R","openid":"o"}"#,
                Malformed::Missing("access_token"),
            ),
            (
                br#"{"access_token":"A","refresh_token":"R","openid":"o","expires_in":"soon"}"#,
                Malformed::WrongType("expires_in"),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(token_grant(&ok(body)).unwrap_err(), *expected);
        }
    }

    #[test]
    fn errcode_decides_and_every_suffix_style_is_just_text() {
        let cases: &[(&[u8], i64)] = &[
            (br#"{"errcode":40029,"errmsg":"invalid code"}"#, 40029),
            (br#"{"errcode":40029,"errmsg":"invalid code, rid: 61a969fa-3824f418-2a65b14e"}"#, 40029),
            (br#"{"errcode":40163,"errmsg":"code been used, hints: [ req_id: plAv90053th21 ]"}"#, 40163),
            (br#"{"errcode":42001,"errmsg":"access_token expired hint: [I9JQua0689a456!]"}"#, 42001),
            (br#"{"errcode":48001,"errmsg":"api unauthorized rid: 61b15c0d-1"}"#, 48001),
            (br#"{"errcode":"40125","errmsg":"invalid appsecret, view more at http:\/\/t.cn\/RAEkdVq hint: [M5_j]"}"#, 40125),
            (br#"{"errcode":-1,"errmsg":"system error"}"#, -1),
            // An errcode with an openid next to it is still an error.
            (br#"{"errcode":40003,"errmsg":"ok","openid":"o"}"#, 40003),
        ];
        for (body, code) in cases {
            match parse_reply(body).unwrap() {
                Reply::Err { errcode, errmsg } => {
                    assert_eq!(errcode, *code);
                    assert!(!errmsg.is_empty());
                }
                Reply::Ok(_) => panic!("{code} read as success"),
            }
        }
    }

    #[test]
    fn errcode_zero_is_success_even_with_other_fields() {
        let map = ok(br#"{"errcode":0,"errmsg":"ok","rid":"x","extra":[1]}"#);
        assert_eq!(check_ok(&map), Ok(()));
        assert_eq!(
            check_ok(&ok(br#"{"errmsg":"ok"}"#)),
            Err(Malformed::Missing("errcode"))
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"<html>502 Bad Gateway</html>",
            b"[1,2]",
            b"\"ok\"",
            b"{\"errcode\":",
            b"\xff\xfe{",
        ];
        for body in cases {
            assert!(
                parse_reply(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(parse_reply(b"[1]"), Err(Malformed::NotObject)));
        assert!(matches!(
            parse_reply(br#"{"errcode":{}}"#),
            Err(Malformed::WrongType("errcode"))
        ));
    }

    #[test]
    fn errmsg_is_shortened_and_stripped_of_control_characters() {
        let long = format!(
            "{{\"errcode\":-1,\"errmsg\":\"a\u{7}b{}\"}}",
            "x".repeat(500)
        );
        let Reply::Err { errmsg, .. } = parse_reply(long.as_bytes()).unwrap() else {
            panic!("not an error");
        };
        assert!(errmsg.starts_with("ab"));
        assert_eq!(errmsg.chars().count(), ERRMSG_MAX_CHARS);
    }

    #[test]
    fn lone_surrogates_and_invalid_utf8_become_replacement_characters() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"openid":"o1","nickname":"\ud83d"}"#, "\u{fffd}"),
            (
                br#"{"openid":"o1","nickname":"a\ud83d\u0041"}"#,
                "a\u{fffd}A",
            ),
            (br#"{"openid":"o1","nickname":"\ude00x"}"#, "\u{fffd}x"),
            (br#"{"openid":"o1","nickname":"\ud83d\ude00"}"#, "\u{1f600}"),
            (br#"{"openid":"o1","nickname":"\\ud83d"}"#, "\\ud83d"),
            (
                b"{\"openid\":\"o1\",\"nickname\":\"\xe5\xbc\xa0\xff\xfe\"}",
                "张\u{fffd}\u{fffd}",
            ),
            (br#"{"openid":"o1","nickname":"\ud83d"#, ""),
        ];
        for (body, want) in cases {
            match parse_reply(body) {
                Ok(Reply::Ok(map)) => {
                    let info = user_info(&map).unwrap();
                    assert_eq!(info.nickname, *want, "{}", String::from_utf8_lossy(body));
                }
                other if want.is_empty() => assert!(other.is_err(), "truncated body: {other:?}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn a_lone_surrogate_in_any_string_field_is_repaired() {
        let body = br#"{"access_token":"AT","expires_in":7200,"refresh_token":"RT","openid":"o\udc00","scope":"snsapi_base"}"#;
        let Ok(Reply::Ok(map)) = parse_reply(body) else {
            panic!("refused");
        };
        assert_eq!(token_grant(&map).unwrap().openid, "o\u{fffd}");
    }
}
