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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::{Refusal, flight};

    fn every_reply() -> Vec<Reply> {
        vec![
            Reply::Authorize {
                location: "https://open.weixin.qq.com/connect/oauth2/authorize?x".into(),
                fragment_report: Some("/_wxgate/fragment?state=s".into()),
            },
            Reply::Authorize {
                location: "https://open.weixin.qq.com/connect/oauth2/authorize?x".into(),
                fragment_report: None,
            },
            Reply::Redirect {
                location: "/page".into(),
            },
            Reply::LoginRequired {
                login_url: "/_wxgate/start?rd=%2F".into(),
            },
            Reply::OpenInWeChat {
                page: "https://m.example.com/".into(),
            },
            Reply::Identity(vec![(
                http::HeaderName::from_static("x-wechat-identity"),
                HeaderValue::from_static("jwt"),
            )]),
            Reply::Me(serde_json::json!({"openid": "o1"})),
            Reply::Jwks(Bytes::from_static(b"{\"keys\":[]}")),
            Reply::Refuse(Refusal::Snapshot),
            Reply::Refuse(Refusal::StaleLogin),
            Reply::Refuse(Refusal::NotAdmitted {
                openid: "o1".into(),
            }),
            Reply::Refuse(Refusal::Callback {
                failure: flight::Failure::WeChatTimeout,
                retry: "/page".into(),
            }),
        ]
    }

    /// Issue 18: the login's pages were built apart from the rest and lacked `nosniff`.
    #[test]
    fn every_login_answer_carries_the_gateways_security_headers() {
        for as_json in [false, true] {
            for reply in every_reply() {
                let label = format!("{reply:?}");
                let response = answer(reply.into(), as_json);
                let headers = response.headers();
                assert_eq!(headers["x-content-type-options"], "nosniff", "{label}");
                assert_eq!(headers["x-frame-options"], "DENY", "{label}");
                assert!(headers.contains_key(CACHE_CONTROL), "{label}");
            }
        }
    }

    /// Issue 18: a refused 快照页 visitor's script got an HTML page it cannot read.
    #[test]
    fn refusals_follow_the_json_or_page_rule() {
        for refusal in [
            Refusal::Snapshot,
            Refusal::NotWeChat,
            Refusal::Unnamed,
            Refusal::StaleLogin,
            Refusal::CallbackMethod,
            Refusal::WeChatBudget(std::time::Duration::from_secs(3)),
        ] {
            let label = format!("{refusal:?}");
            let json = answer(refusal.clone().into(), true);
            assert_eq!(json.headers()[CONTENT_TYPE], "application/json", "{label}");
            let page = answer(refusal.into(), false);
            assert_eq!(
                page.headers()[CONTENT_TYPE],
                "text/html; charset=utf-8",
                "{label}"
            );
            assert_eq!(json.status(), page.status(), "{label}");
        }
    }

    #[test]
    fn cookies_and_the_referrer_policy_ride_on_any_answer() {
        let cookie = cookie::Cookie::new("wxgate_state", "sealed");
        let answer_ = Answer::from(Reply::Refuse(Refusal::StaleLogin))
            .with_cookie(cookie)
            .without_referrer();
        let response = answer(answer_, false);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[SET_COOKIE], "wxgate_state=sealed");
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    }

    #[tokio::test]
    async fn a_callback_failure_page_links_back_to_its_page() {
        let refusal = Refusal::Callback {
            failure: flight::Failure::Declined,
            retry: "/lottery?id=<1>".into(),
        };
        let response = answer(refusal.into(), false);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("href=\"/lottery?id=&lt;1&gt;\""), "{body}");
        assert!(body.contains("你已拒绝授权"), "{body}");
    }
}
