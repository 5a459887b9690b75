//! Every response the gateway makes itself, built here and nowhere else: a [`Failure`]
//! becomes a small HTML page for browsers or JSON for XHR/fetch and API clients
//! ([`render`]), the login's answers become redirects, the hop page, the QR page or JSON
//! ([`answer`]), and all of them carry the same security headers ([`build`]). Pages never
//! carry a secret, code, token or session id.

mod answer;
pub mod hop;
pub mod qr;

pub use answer::answer;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{Body, full};
use crate::failure::Failure;
use crate::login::flight;

/// The words of a failure: a stable code for scripts, the title in Chinese and English, the
/// detail, and where the visitor may try again.
struct Text {
    code: &'static str,
    title_zh: &'static str,
    title_en: &'static str,
    detail: &'static str,
    retry: Option<String>,
}

fn text(failure: &Failure) -> Text {
    let t = |code, title_zh, title_en, detail| Text {
        code,
        title_zh,
        title_en,
        detail,
        retry: None,
    };
    match failure {
        Failure::BadRequest(reason) => t("bad_request", "请求无效", "Bad request", reason),
        Failure::Forbidden(reason) => t("forbidden", "禁止访问", "Forbidden", reason),
        Failure::UriTooLong => t(
            "uri_too_long",
            "链接过长",
            "URL too long",
            "The address of this request is longer than the gateway accepts.",
        ),
        Failure::HeadersTooLarge => t(
            "headers_too_large",
            "请求头过大",
            "Request headers too large",
            "The request carries more or larger headers than the gateway accepts.",
        ),
        Failure::PayloadTooLarge => t(
            "payload_too_large",
            "内容过大",
            "Payload too large",
            "The request body is larger than the gateway accepts.",
        ),
        Failure::NoRoute => t(
            "not_found",
            "页面不存在",
            "Not found",
            "No page is configured at this address.",
        ),
        Failure::UpstreamUnreachable => t(
            "upstream_unreachable",
            "服务暂时不可用",
            "Service unreachable",
            "The application behind the gateway cannot be reached. Please try again shortly.",
        ),
        Failure::UpstreamTimeout => t(
            "upstream_timeout",
            "服务响应超时",
            "Service timed out",
            "The application behind the gateway did not answer in time. Please try again.",
        ),
        Failure::UpstreamFailed => t(
            "upstream_failed",
            "服务出错",
            "Bad gateway",
            "The application behind the gateway broke off its answer. Please try again.",
        ),
        Failure::Unavailable => t(
            "unavailable",
            "服务繁忙",
            "Service unavailable",
            "The gateway cannot take this request now. Please try again shortly.",
        ),
        Failure::TooManyRequests(_) => t(
            "too_many_requests",
            "操作过于频繁",
            "Too many requests",
            "Too many logins from this network in a short time. Please wait a moment and try again.",
        ),
        Failure::MethodNotAllowed => t(
            "method_not_allowed",
            "不支持的请求方法",
            "Method not allowed",
            "The gateway forwards requests, not tunnels: this method is not accepted.",
        ),
        Failure::CallbackMethod => t(
            "method_not_allowed",
            "请求无效",
            "Method not allowed",
            "The login callback only takes GET.",
        ),
        Failure::SnapshotRefused => t(
            "snapshot_refused",
            "请使用完整服务",
            "This page needs your WeChat profile",
            "快照页模式下无法使用此页面，请点击页面下方「使用完整服务」后再试。",
        ),
        Failure::WeChatOnly => t(
            "wechat_only",
            "请在微信中打开",
            "Open this page in WeChat",
            "此页面仅支持在微信客户端内访问。",
        ),
        Failure::ListedVisitorsOnly => t(
            "listed_visitors_only",
            "请在微信中打开",
            "Open this page in WeChat",
            "此页面仅对指定的微信用户开放，请在微信客户端内访问。",
        ),
        Failure::NotAdmitted { .. } => t(
            "not_admitted",
            "无访问权限",
            "Not on the access list",
            "This WeChat account is not on this page's access list.",
        ),
        Failure::LoginsBusy(_) => t(
            "logins_busy",
            "登录人数过多",
            "Too many logins right now",
            "请稍后刷新此页面重试。",
        ),
        Failure::LoginExpired => Text {
            retry: Some("/".to_owned()),
            ..t(
                "login_expired",
                "登录已失效",
                "This login link has expired",
                "请返回页面重新打开，以重新登录。",
            )
        },
        Failure::LoginFailed { failure, retry } => Text {
            retry: Some(retry.clone()),
            ..login_failed(*failure)
        },
    }
}

/// A failed callback as the visitor sees it: 4xx when the browser's code is bad or the
/// visitor declined, 502/503/504 when WeChat or the store is at fault, each with a retry
/// link and never a redirect.
fn login_failed(failure: flight::Failure) -> Text {
    use flight::Failure as Callback;
    let (code, title_zh, title_en, detail) = match failure {
        Callback::Declined => (
            "authorization_declined",
            "你已拒绝授权",
            "Authorization declined",
            "需要你的授权才能继续访问此页面。",
        ),
        Callback::BadCode => (
            "code_invalid",
            "登录已失效",
            "Login expired",
            "授权码已失效或已被使用，请重试。",
        ),
        Callback::WeChatTimeout => (
            "wechat_timeout",
            "微信响应超时",
            "WeChat timed out",
            "微信服务器响应超时，请稍后重试。",
        ),
        Callback::WeChatUnavailable => (
            "wechat_unavailable",
            "微信服务繁忙",
            "WeChat is busy",
            "微信服务器繁忙，请稍后重试。",
        ),
        Callback::WeChatError => (
            "wechat_error",
            "登录失败",
            "Login failed",
            "与微信通信失败，请稍后重试。",
        ),
        Callback::Store => (
            "store_unavailable",
            "服务繁忙",
            "Service unavailable",
            "会话存储暂时不可用，请稍后重试。",
        ),
    };
    Text {
        code,
        title_zh,
        title_en,
        detail,
        retry: None,
    }
}

/// Answers `failure` as JSON when the client asked for JSON, as a page otherwise.
pub fn respond(failure: &Failure, request_headers: &HeaderMap) -> Response<Body> {
    render(failure, wants_json(request_headers))
}

/// The one way a failure becomes a response: JSON when the client is a script, a page
/// otherwise.
pub fn render(failure: &Failure, as_json: bool) -> Response<Body> {
    let mut response = if as_json {
        json(failure)
    } else {
        html(failure)
    };
    let headers = response.headers_mut();
    if let Some(seconds) = failure.retry_after() {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    match failure {
        Failure::MethodNotAllowed => {
            headers.insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            // A client that asked for a tunnel may already be sending the tunnel's bytes.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Failure::CallbackMethod => {
            headers.insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        _ => {}
    }
    response
}

/// True for XHR/fetch and API clients, by the gate's own rule
/// ([`crate::login::visitor::is_script_call`]): a page load from Android's WebView, which
/// sends `X-Requested-With: com.tencent.mm`, gets a page.
pub fn wants_json(headers: &HeaderMap) -> bool {
    crate::login::visitor::is_script_call(headers)
}

fn json(failure: &Failure) -> Response<Body> {
    let text = text(failure);
    let status = failure.status();
    let mut body = serde_json::json!({
        "error": text.code,
        "message": text.detail,
        "status": status.as_u16(),
    });
    if let Failure::NotAdmitted { openid } = failure {
        // The visitor's own id, to send to whoever runs the site.
        body["openid"] = serde_json::Value::from(openid.as_str());
    }
    json_response(status, &body)
}

fn html(failure: &Failure) -> Response<Body> {
    let text = text(failure);
    let status = failure.status();
    let detail = match failure {
        Failure::NotAdmitted { openid } => format!(
            "<p>如需访问，请将下面的编号发给管理员。<br>To be let in, send this id to whoever runs this site.</p>\
<p><code id=\"openid\" style=\"user-select:all;word-break:break-all\">{}</code></p>",
            escape(openid)
        ),
        _ => format!("<p>{}</p>", escape(text.detail)),
    };
    let retry = text
        .retry
        .map(|url| {
            format!(
                "<a class=\"btn\" href=\"{}\">重试 · Retry</a>",
                escape(&url)
            )
        })
        .unwrap_or_default();
    let body = page(
        &format!("{} · {}", text.title_zh, text.title_en),
        &format!(
            "<p class=\"code\">{status}</p><h1>{zh}</h1><h2>{en}</h2>{detail}{retry}",
            status = status.as_u16(),
            zh = escape(text.title_zh),
            en = escape(text.title_en),
        ),
    );
    build(status, "text/html; charset=utf-8", Bytes::from(body))
}

/// A JSON answer the browser must not keep.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    build(status, "application/json", Bytes::from(value.to_string()))
}

/// The security headers of every response the gateway makes itself, whatever its body:
/// nothing kept by caches, nothing sniffed, nothing framed.
pub(crate) fn secure(headers: &mut http::HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // No other site may frame the gateway's pages (clickjacking, RFC 6819 §4.4.1.9).
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

pub(crate) fn build(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(headers);
    response
}

/// The shell of every page: mobile first, no external assets.
pub fn page(title: &str, inner_html: &str) -> String {
    format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body><main>{inner_html}</main></body></html>",
        title = escape(title),
    )
}

pub(crate) const STYLE: &str = "body{margin:0;font-family:-apple-system,BlinkMacSystemFont,'PingFang SC','Noto Sans CJK SC',\
'Microsoft YaHei',sans-serif;background:#ededed;color:#191919}main{max-width:480px;margin:0 auto;\
padding:56px 24px;text-align:center}h1{font-size:22px;font-weight:500;margin:8px 0}h2{font-size:15px;\
font-weight:400;color:#7f7f7f;margin:0 0 16px}p{font-size:15px;line-height:1.6;color:#4c4c4c}\
.code{font-size:44px;color:#b2b2b2;margin:0}a.btn{display:inline-block;margin-top:24px;padding:10px 32px;\
border-radius:6px;background:#07c160;color:#fff;text-decoration:none;font-size:17px}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn json_for_api_clients_html_for_browsers() {
        let table = [
            (vec![("accept", "application/json")], true),
            (vec![("accept", "application/json, text/plain, */*")], true),
            (vec![("x-requested-with", "XMLHttpRequest")], true),
            (
                vec![(
                    "accept",
                    "text/html,application/xhtml+xml,application/json;q=0.9",
                )],
                false,
            ),
            (vec![("accept", "*/*")], false),
            (vec![], false),
        ];
        for (pairs, want) in table {
            assert_eq!(wants_json(&headers(&pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn every_failure_has_its_status() {
        let table = [
            (Failure::BadRequest("x"), 400),
            (Failure::Forbidden("x"), 403),
            (Failure::UriTooLong, 414),
            (Failure::HeadersTooLarge, 431),
            (Failure::PayloadTooLarge, 413),
            (Failure::NoRoute, 404),
            (Failure::UpstreamUnreachable, 502),
            (Failure::UpstreamFailed, 502),
            (Failure::UpstreamTimeout, 504),
            (Failure::Unavailable, 503),
            (Failure::TooManyRequests(7), 429),
        ];
        for (failure, status) in table {
            assert_eq!(
                respond(&failure, &HeaderMap::new()).status().as_u16(),
                status
            );
            let json = respond(&failure, &headers(&[("accept", "application/json")]));
            assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
            if let Failure::TooManyRequests(seconds) = failure {
                assert_eq!(
                    json.headers()[http::header::RETRY_AFTER],
                    seconds.to_string()
                );
            }
        }
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
