//! The login's answers as responses. The login decides what to answer ([`Answer`]); this is
//! the one place that turns it into status, headers and body, so a login page carries the
//! same security headers and follows the same JSON-or-page rule as every other.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};

use super::{build, hop, json_response, qr, render, secure};
use crate::body::{Body, empty};
use crate::failure::Failure;
use crate::login::{Answer, Reply};

/// Renders `answer`; `as_json`: the visitor is a script (what its failures are written as).
pub fn answer(answer: Answer, as_json: bool) -> Response<Body> {
    let Answer {
        reply,
        cookies,
        no_referrer,
    } = answer;
    let mut response = match reply {
        Reply::Authorize {
            location,
            fragment_report: Some(report),
        } => hop::render(&location, &report),
        Reply::Authorize {
            location,
            fragment_report: None,
        }
        | Reply::Redirect { location } => redirect(&location),
        Reply::LoginRequired { login_url } => json_response(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "login_required", "status": 401, "login_url": login_url}),
        ),
        Reply::OpenInWeChat { page } => open_in_wechat(&page),
        Reply::Identity(identity) => {
            let mut response = Response::new(empty());
            let headers = response.headers_mut();
            for (name, value) in identity {
                headers.insert(name, value);
            }
            secure(headers);
            response
        }
        Reply::Me(me) => json_response(StatusCode::OK, &me),
        Reply::Jwks(jwks) => jwks_response(jwks),
        Reply::Refuse(refusal) => render(&Failure::from(refusal), as_json),
    };
    let headers = response.headers_mut();
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            headers.append(SET_COOKIE, value);
        }
    }
    if no_referrer {
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    }
    response
}

/// A 302 to `location`, never cached.
fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, value);
    }
    secure(headers);
    response
}

/// The page for other browsers: a QR code of `page`, to open in WeChat.
fn open_in_wechat(page: &str) -> Response<Body> {
    let mut response = build(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from(qr::render(page)),
    );
    response.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(qr::CONTENT_SECURITY_POLICY),
    );
    response
}

/// The public keys: the one answer of the gateway that caches may keep (for five minutes,
/// so a rotation reaches verifiers soon).
fn jwks_response(jwks: Bytes) -> Response<Body> {
    let mut response = Response::new(crate::body::full(jwks));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    secure(headers);
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
