//! What a visitor sees when the gateway answers itself: every failure a user can meet is a
//! `Failure`, and `respond` turns it into a small HTML page for browsers or JSON for
//! XHR/fetch and API clients. Pages never carry a secret, code, token or session id.

pub mod hop;
pub mod qr;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{Body, full};

/// A failure the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request is malformed (bad path, bad framing…); the reason is safe to show.
    BadRequest(&'static str),
    /// The request is understood and refused; the reason is safe to show.
    Forbidden(&'static str),
    UriTooLong,
    HeadersTooLarge,
    PayloadTooLarge,
    NoRoute,
    /// The upstream refused the connection or could not be reached in time.
    UpstreamUnreachable,
    /// The upstream took longer than the route's timeout to answer.
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, malformed answer).
    UpstreamFailed,
    /// The gateway is shutting down or saturated.
    Unavailable,
    /// The client started or finished too many logins; try again after this many seconds.
    TooManyRequests(u64),
    /// A method the gateway does not forward (CONNECT: it proxies requests, not tunnels).
    MethodNotAllowed,
}

struct Text {
    code: &'static str,
    title_zh: &'static str,
    title_en: &'static str,
    detail: &'static str,
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::Forbidden(_) => StatusCode::FORBIDDEN,
            Failure::UriTooLong => StatusCode::URI_TOO_LONG,
            Failure::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Failure::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::UpstreamUnreachable | Failure::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Failure::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Failure::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Failure::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn text(&self) -> Text {
        let t = |code, title_zh, title_en, detail| Text {
            code,
            title_zh,
            title_en,
            detail,
        };
        match self {
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
        }
    }
}

/// Answers `failure` as JSON when the client asked for JSON, as a page otherwise.
pub fn respond(failure: &Failure, request_headers: &HeaderMap) -> Response<Body> {
    render(failure, wants_json(request_headers))
}

/// `respond`, for a caller that decided JSON or HTML before the request moved on.
pub fn render(failure: &Failure, as_json: bool) -> Response<Body> {
    let mut response = if as_json {
        json(failure)
    } else {
        html(failure)
    };
    if let Failure::TooManyRequests(seconds) = failure {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(*seconds));
    }
    if let Failure::MethodNotAllowed = failure {
        let headers = response.headers_mut();
        headers.insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        // A client that asked for a tunnel may already be sending the tunnel's bytes.
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
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
    let text = failure.text();
    let body = serde_json::json!({
        "error": text.code,
        "message": text.detail,
        "status": failure.status().as_u16(),
    });
    build(
        failure.status(),
        "application/json",
        Bytes::from(body.to_string()),
    )
}

fn html(failure: &Failure) -> Response<Body> {
    let text = failure.text();
    let status = failure.status();
    let body = page(
        &format!("{} · {}", text.title_zh, text.title_en),
        &format!(
            "<p class=\"code\">{status}</p><h1>{zh}</h1><h2>{en}</h2><p>{detail}</p>",
            status = status.as_u16(),
            zh = escape(text.title_zh),
            en = escape(text.title_en),
            detail = escape(text.detail),
        ),
    );
    build(status, "text/html; charset=utf-8", Bytes::from(body))
}

pub(crate) fn build(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // No other site may frame the gateway's pages (clickjacking, RFC 6819 §4.4.1.9).
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
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
