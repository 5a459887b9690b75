//! The real WeChat client against the in-process mock WeChat over sockets: code exchange,
//! refresh, userinfo and check; typed errcodes; retries (counted by the mock); timeouts;
//! the authorize pages; and that no error or log line ever shows the secret, a code or a token.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::Instrument;
use url::Url;
use wxgate::Secret;
use wxgate::mock::{MockConfig, MockWeChat, USERS};
use wxgate::wechat::{ClientSettings, Errcode, ErrorKind, WeChatClient, WeChatError};

const SECRET: &str = "test-secret-7f3a9c2e51d84b60";
const CALLBACK: &str = "http://127.0.0.1:8080/_wxgate/callback";

struct Mock {
    base: String,
    http: reqwest::Client,
    appid: String,
    // Dropping the sender stops the server when the test ends.
    _stop: oneshot::Sender<()>,
}

async fn start_mock(config: MockConfig) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let appid = config.appid.clone();
    tokio::spawn(MockWeChat::new(config).serve(listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The authorize page answers WeChat's own browser only (the API does not look).
        .user_agent("Mozilla/5.0 (Linux; Android 13; wv) MicroMessenger/8.0.47.2560(0x28002F35)")
        .build()
        .unwrap();
    Mock {
        base,
        http,
        appid,
        _stop: stop,
    }
}

/// The usual test mock: our secret, automatic consent.
async fn auto_mock() -> Mock {
    start_mock(MockConfig {
        secret: Secret::new(SECRET),
        auto_consent: true,
        ..MockConfig::default()
    })
    .await
}

impl Mock {
    fn client_with(&self, secret: &str, timeout: Duration) -> WeChatClient {
        WeChatClient::new(ClientSettings {
            api_base: Url::parse(&self.base).unwrap(),
            appid: self.appid.clone(),
            secret: Secret::new(secret),
            timeout,
            lang: "zh_CN".into(),
        })
        .unwrap()
    }

    fn client(&self) -> WeChatClient {
        self.client_with(SECRET, Duration::from_secs(3))
    }

    fn authorize_url(&self, redirect_uri: &str, scope: &str, state: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("appid", &self.appid)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("scope", scope)
            .append_pair("state", state)
            .finish();
        format!("{}/connect/oauth2/authorize?{query}", self.base)
    }

    async fn get(&self, url: &str, user: &str) -> reqwest::Response {
        self.http
            .get(url)
            .header("cookie", format!("mock_user={user}"))
            .send()
            .await
            .unwrap()
    }

    /// Runs authorize as `user` and returns the code from the 302 back to the callback.
    async fn login(&self, scope: &str, user: &str) -> String {
        let response = self
            .get(&self.authorize_url(CALLBACK, scope, "st4te"), user)
            .await;
        assert_eq!(response.status(), 302, "authorize did not redirect");
        code_of(location(&response))
    }

    async fn faults(&self, patch: Value) {
        let response = self
            .http
            .post(format!("{}/_mock/faults", self.base))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{patch}");
    }

    async fn control(&self, path: &str) -> Value {
        let url = format!("{}/_mock/{path}", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn calls(&self, path: &str) -> u64 {
        self.control("stats").await[path].as_u64().unwrap()
    }

    async fn advance_clock(&self, secs: i64) {
        let url = format!("{}/_mock/clock", self.base);
        let body = json!({ "advance_secs": secs });
        let response = self.http.post(url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn user(&self, id: &str) -> Value {
        let users = self.control("users").await;
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|user| user["id"] == id)
            .unwrap()
            .clone()
    }
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

fn code_of(location: String) -> String {
    let url = Url::parse(&location).unwrap();
    let code = url
        .query_pairs()
        .find(|(key, _)| key == "code")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| panic!("no code in {location}"));
    assert_eq!(code.len(), 32);
    assert!(code.chars().all(|c| c.is_ascii_alphanumeric()));
    code
}

/// Unwraps an error and checks that neither its Display nor its Debug leaks anything secret.
fn failed<T: std::fmt::Debug>(result: Result<T, WeChatError>, secrets: &[&str]) -> WeChatError {
    let error = result.expect_err("expected an error");
    let shown = format!("{error} | {error:?}");
    for secret in secrets.iter().chain(&[SECRET]) {
        assert!(!secret.is_empty());
        assert!(!shown.contains(secret), "error shows a secret: {shown}");
    }
    assert!(!shown.contains("secret="), "error shows a query: {shown}");
    error
}

#[tokio::test]
async fn base_code_exchange_gives_openid_without_unionid() {
    let mock = auto_mock().await;
    let code = mock.login("snsapi_base", "lilei").await;
    let grant = mock.client().exchange_code(&code).await.unwrap();
    let expected = mock.user("lilei").await;
    assert_eq!(grant.openid, expected["openid"]);
    assert_eq!(grant.scope, "snsapi_base");
    assert_eq!(grant.unionid, None);
    assert!(!grant.is_snapshotuser);
    assert_eq!(grant.expires_in, Duration::from_secs(7200));
    assert_eq!(grant.access_token.expose().len(), 110);
    assert!(!format!("{grant:?}").contains(grant.access_token.expose()));
}

#[tokio::test]
async fn userinfo_code_exchange_carries_unionid_only_for_users_that_have_one() {
    let mock = auto_mock().await;
    let client = mock.client();
    let lilei = client
        .exchange_code(&mock.login("snsapi_userinfo", "lilei").await)
        .await
        .unwrap();
    assert_eq!(lilei.scope, "snsapi_userinfo");
    assert_eq!(
        lilei.unionid.as_deref(),
        mock.user("lilei").await["unionid"].as_str()
    );
    assert!(lilei.unionid.is_some());
    let bell = client
        .exchange_code(&mock.login("snsapi_userinfo", "bell").await)
        .await
        .unwrap();
    assert_eq!(bell.unionid, None);
}

#[tokio::test]
async fn the_mock_sends_u_escapes_with_a_lone_surrogate_as_wechat_does() {
    let mock = auto_mock().await;
    let client = mock.client();
    let grant = client
        .exchange_code(&mock.login("snsapi_userinfo", "xiaohong").await)
        .await
        .unwrap();
    let raw = mock
        .http
        .get(format!(
            "{}/sns/userinfo?access_token={}&openid={}&lang=zh_CN",
            mock.base,
            grant.access_token.expose(),
            grant.openid
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(r#""nickname":"\u5c0f\u7ea2\ud83d""#), "{raw}");
    assert!(
        serde_json::from_str::<Value>(&raw).is_err(),
        "a strict parser refuses it, as with WeChat's"
    );
    let info = client
        .userinfo(grant.access_token.expose(), &grant.openid)
        .await
        .unwrap();
    assert_eq!(info.nickname, "小红\u{FFFD}");
}

#[tokio::test]
async fn userinfo_reads_emoji_pua_and_raw_control_byte_nicknames() {
    let mock = auto_mock().await;
    let client = mock.client();
    // xiaohong's nickname comes \u-escaped with a lone surrogate: repaired, not refused.
    for id in ["lilei", "hanmeimei", "bell", "laowang", "xiaohong"] {
        let code = mock.login("snsapi_userinfo", id).await;
        let grant = client.exchange_code(&code).await.unwrap();
        let info = client
            .userinfo(grant.access_token.expose(), &grant.openid)
            .await
            .unwrap();
        let fixture = USERS.iter().find(|user| user.id == id).unwrap();
        assert_eq!(info.nickname, fixture.nickname, "{id}");
        assert_eq!(info.openid, grant.openid);
        assert_eq!(info.unionid, grant.unionid);
        assert!(
            info.headimgurl
                .starts_with("https://thirdwx.qlogo.cn/mmopen/"),
            "{}",
            info.headimgurl
        );
        assert_eq!((info.sex, info.country.as_str()), (0, ""));
        client
            .check(grant.access_token.expose(), &grant.openid)
            .await
            .unwrap();
    }
    let bell = client
        .exchange_code(&mock.login("snsapi_userinfo", "bell").await)
        .await
        .unwrap();
    let info = client
        .userinfo(bell.access_token.expose(), &bell.openid)
        .await
        .unwrap();
    assert!(info.nickname.contains('\u{7}'));

    // The mock answers like WeChat: field order, `\/` in URLs, the control byte left raw.
    let mut url = Url::parse(&format!("{}/sns/userinfo", mock.base)).unwrap();
    url.query_pairs_mut()
        .append_pair("access_token", bell.access_token.expose())
        .append_pair("openid", &bell.openid);
    let raw = mock.http.get(url).send().await.unwrap();
    assert_eq!(raw.headers()["content-type"], "text/plain");
    let body = raw.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("{\"openid\":"), "{text}");
    assert!(
        body.contains(&0x07) && text.contains("https:\\/\\/thirdwx.qlogo.cn"),
        "{text}"
    );
    assert!(
        !text.contains("unionid") && !text.contains("is_snapshotuser"),
        "{text}"
    );
}

#[tokio::test]
async fn snapshot_user_is_flagged_with_a_virtual_identity() {
    let mock = auto_mock().await;
    let client = mock.client();
    let grant = client
        .exchange_code(&mock.login("snsapi_userinfo", "snapshot").await)
        .await
        .unwrap();
    assert!(grant.is_snapshotuser);
    let fixture = mock.user("snapshot").await;
    assert_eq!(grant.openid, fixture["snapshot_openid"]);
    assert_ne!(grant.openid, fixture["openid"]);
    let info = client
        .userinfo(grant.access_token.expose(), &grant.openid)
        .await
        .unwrap();
    assert_eq!(info.nickname, "微信用户");

    mock.faults(json!({"snapshot": true, "snapshot_userinfo_denied": true}))
        .await;
    let grant = client
        .exchange_code(&mock.login("snsapi_userinfo", "lilei").await)
        .await
        .unwrap();
    assert!(grant.is_snapshotuser);
    let error = failed(
        client
            .userinfo(grant.access_token.expose(), &grant.openid)
            .await,
        &[grant.access_token.expose()],
    );
    assert_eq!(error.errcode(), Some(Errcode::ApiUnauthorized));
}

#[tokio::test]
async fn replayed_code_is_a_typed_40163_and_is_not_retried() {
    let mock = auto_mock().await;
    let client = mock.client();
    let code = mock.login("snsapi_base", "lilei").await;
    client.exchange_code(&code).await.unwrap();
    let error = failed(client.exchange_code(&code).await, &[&code]);
    assert_eq!(error.errcode(), Some(Errcode::CodeUsed));
    assert_eq!(error.kind(), ErrorKind::BadCode);
    assert!(!error.is_retryable());
    assert_eq!(
        mock.calls("/sns/oauth2/access_token").await,
        2,
        "one call per exchange"
    );
}

#[tokio::test]
async fn unknown_and_expired_codes_are_40029_bad_code() {
    let mock = auto_mock().await;
    let client = mock.client();
    let bogus = "0".repeat(32);
    let error = failed(client.exchange_code(&bogus).await, &[&bogus]);
    assert_eq!(error.errcode(), Some(Errcode::InvalidCode));
    assert_eq!(error.kind(), ErrorKind::BadCode);

    let code = mock.login("snsapi_base", "lilei").await;
    mock.advance_clock(301).await;
    let error = failed(client.exchange_code(&code).await, &[&code]);
    assert_eq!(error.errcode(), Some(Errcode::InvalidCode));
    assert_eq!(mock.calls("/sns/oauth2/access_token").await, 2);
}

#[tokio::test]
async fn wrong_secret_is_40125_misconfigured() {
    let mock = auto_mock().await;
    let wrong = "wrong-secret-0123456789";
    let client = mock.client_with(wrong, Duration::from_secs(3));
    let code = mock.login("snsapi_base", "lilei").await;
    let error = failed(client.exchange_code(&code).await, &[wrong, &code]);
    assert_eq!(error.errcode(), Some(Errcode::InvalidAppsecret));
    assert_eq!(error.kind(), ErrorKind::Misconfigured);
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn refresh_gives_a_working_token_and_bad_refresh_tokens_are_typed() {
    let mock = auto_mock().await;
    let client = mock.client();
    let grant = client
        .exchange_code(&mock.login("snsapi_userinfo", "hanmeimei").await)
        .await
        .unwrap();
    let refreshed = client.refresh(grant.refresh_token.expose()).await.unwrap();
    assert_eq!(refreshed.openid, grant.openid);
    assert_eq!(refreshed.scope, "snsapi_userinfo");
    assert_ne!(refreshed.access_token, grant.access_token);
    let info = client
        .userinfo(refreshed.access_token.expose(), &refreshed.openid)
        .await
        .unwrap();
    assert_eq!(info.openid, grant.openid);

    // In `extend` mode a still-valid access token comes back unchanged.
    mock.faults(json!({"refresh_mode": "extend"})).await;
    let extended = client.refresh(grant.refresh_token.expose()).await.unwrap();
    assert_eq!(extended.access_token, refreshed.access_token);

    let bogus = "93_not-a-refresh-token";
    let error = failed(client.refresh(bogus).await, &[bogus]);
    assert_eq!(error.errcode(), Some(Errcode::InvalidRefreshToken));
    assert_eq!(error.kind(), ErrorKind::RefreshExpired);
}

#[tokio::test]
async fn expired_tokens_say_refresh_then_reauthorize() {
    let mock = auto_mock().await;
    let client = mock.client();
    let grant = client
        .exchange_code(&mock.login("snsapi_userinfo", "lilei").await)
        .await
        .unwrap();
    let (access, refresh) = (grant.access_token.expose(), grant.refresh_token.expose());
    mock.advance_clock(7201).await;
    let error = failed(client.userinfo(access, &grant.openid).await, &[access]);
    assert_eq!(error.errcode(), Some(Errcode::AccessTokenExpired));
    assert_eq!(error.kind(), ErrorKind::TokenExpired);
    let refreshed = client.refresh(refresh).await.unwrap();
    client
        .check(refreshed.access_token.expose(), &grant.openid)
        .await
        .unwrap();
    mock.advance_clock(31 * 86_400).await;
    let error = failed(client.refresh(refresh).await, &[refresh]);
    assert_eq!(error.errcode(), Some(Errcode::RefreshTokenExpired));
    assert_eq!(error.kind(), ErrorKind::RefreshExpired);
}

#[tokio::test]
async fn userinfo_with_a_base_token_is_48001_and_foreign_openid_is_40003() {
    let mock = auto_mock().await;
    let client = mock.client();
    let grant = client
        .exchange_code(&mock.login("snsapi_base", "lilei").await)
        .await
        .unwrap();
    let token = grant.access_token.expose();
    let error = failed(client.userinfo(token, &grant.openid).await, &[token]);
    assert_eq!(error.errcode(), Some(Errcode::ApiUnauthorized));
    assert_eq!(error.kind(), ErrorKind::Unauthorized);
    client.check(token, &grant.openid).await.unwrap();
    let other = mock.user("bell").await["openid"]
        .as_str()
        .unwrap()
        .to_owned();
    let error = failed(client.check(token, &other).await, &[token]);
    assert_eq!(error.errcode(), Some(Errcode::InvalidOpenid));
    let error = failed(client.check("93_unknown", &other).await, &[token]);
    assert_eq!(error.errcode(), Some(Errcode::InvalidCredential));
    assert_eq!(error.kind(), ErrorKind::TokenExpired);
}

#[tokio::test]
async fn one_system_busy_is_retried_into_success() {
    let mock = auto_mock().await;
    let code = mock.login("snsapi_base", "lilei").await;
    mock.faults(json!({"fail_next": 1})).await;
    mock.client().exchange_code(&code).await.unwrap();
    assert_eq!(mock.calls("/sns/oauth2/access_token").await, 2);
}

#[tokio::test]
async fn two_system_busy_answers_fail_as_unavailable_after_one_retry() {
    let mock = auto_mock().await;
    let code = mock.login("snsapi_base", "lilei").await;
    mock.faults(json!({"fail_next": 2})).await;
    let error = failed(mock.client().exchange_code(&code).await, &[&code]);
    assert_eq!(error.errcode(), Some(Errcode::SystemBusy));
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert_eq!(mock.calls("/sns/oauth2/access_token").await, 2);
}

#[tokio::test]
async fn http_5xx_is_retried_once() {
    let mock = auto_mock().await;
    let client = mock.client();
    let code = mock.login("snsapi_base", "lilei").await;
    mock.faults(json!({"http_error_next": 1, "http_error_status": 503}))
        .await;
    client.exchange_code(&code).await.unwrap();
    assert_eq!(mock.calls("/sns/oauth2/access_token").await, 2);

    let code = mock.login("snsapi_base", "lilei").await;
    mock.faults(json!({"http_error_next": 2, "http_error_status": 502}))
        .await;
    let error = failed(client.exchange_code(&code).await, &[&code]);
    assert!(
        matches!(error, WeChatError::Status { status, .. } if status == 502),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert_eq!(mock.calls("/sns/oauth2/access_token").await, 4);
}

#[tokio::test]
async fn hanging_wechat_returns_a_timeout_error() {
    let mock = auto_mock().await;
    let client = mock.client_with(SECRET, Duration::from_millis(400));
    let code = mock.login("snsapi_base", "lilei").await;
    mock.faults(json!({"hang_next": 1})).await;
    let error = failed(client.exchange_code(&code).await, &[&code]);
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(error.is_retryable());
}

#[tokio::test]
async fn garbage_body_is_a_malformed_answer_and_not_retried() {
    let mock = auto_mock().await;
    let code = mock.login("snsapi_base", "lilei").await;
    mock.faults(json!({"garbage_next": 1})).await;
    let error = failed(mock.client().exchange_code(&code).await, &[&code]);
    assert!(matches!(error, WeChatError::Malformed { .. }), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Upstream);
    assert_eq!(mock.calls("/sns/oauth2/access_token").await, 1);
}

#[tokio::test]
async fn unreachable_wechat_is_unavailable_and_the_error_hides_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = WeChatClient::new(ClientSettings {
        api_base: Url::parse(&base).unwrap(),
        appid: "wx2ebfe5f20389c64a".into(),
        secret: Secret::new(SECRET),
        timeout: Duration::from_secs(2),
        lang: "zh_CN".into(),
    })
    .unwrap();
    let code = "061eY9xX08tQu02IH4wX05BjxX0eY9xA";
    let error = failed(client.exchange_code(code).await, &[code, "access_token?"]);
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.is_retryable());
}

#[tokio::test]
async fn every_content_type_and_errmsg_style_is_understood() {
    let mock = auto_mock().await;
    let client = mock.client();
    for content_type in ["plain", "json-encoding", "json-charset"] {
        mock.faults(json!({"content_type": content_type})).await;
        let grant = client
            .exchange_code(&mock.login("snsapi_userinfo", "hanmeimei").await)
            .await
            .unwrap();
        client
            .userinfo(grant.access_token.expose(), &grant.openid)
            .await
            .unwrap();
        client
            .check(grant.access_token.expose(), &grant.openid)
            .await
            .unwrap();
        let raw = mock
            .http
            .get(format!("{}/sns/auth", mock.base))
            .send()
            .await
            .unwrap();
        let expected = match content_type {
            "plain" => "text/plain",
            "json-encoding" => "application/json; encoding=utf-8",
            _ => "application/json; charset=utf-8",
        };
        assert_eq!(raw.headers()["content-type"], expected);
    }
    for style in ["none", "rid", "hints", "hint"] {
        mock.faults(json!({"errmsg_style": style})).await;
        let bogus = "0abcdefghijklmnopqrstuvwxyz12345";
        let error = failed(client.exchange_code(bogus).await, &[bogus]);
        assert_eq!(error.errcode(), Some(Errcode::InvalidCode), "{style}");
    }
}

#[tokio::test]
async fn concurrent_exchanges_of_one_code_give_exactly_one_success() {
    let mock = auto_mock().await;
    let client = mock.client();
    for _ in 0..10 {
        let code = mock.login("snsapi_base", "lilei").await;
        let (a, b) = tokio::join!(client.exchange_code(&code), client.exchange_code(&code));
        let (ok, err) = match (a, b) {
            (Ok(grant), Err(error)) | (Err(error), Ok(grant)) => (grant, error),
            other => panic!("expected one success and one failure: {other:?}"),
        };
        assert!(!ok.openid.is_empty());
        let error = failed(Err::<(), _>(err), &[&code]);
        assert_eq!(error.errcode(), Some(Errcode::CodeUsed));
    }
}

#[tokio::test]
async fn base_authorize_redirects_with_code_and_state_before_the_fragment() {
    let mock = auto_mock().await;
    let url = mock.authorize_url(
        "http://127.0.0.1:8080/app/?from=singlemessage#/route",
        "snsapi_base",
        "Ab12",
    );
    let response = mock.get(&url, "lilei").await;
    assert_eq!(response.status(), 302);
    let back = location(&response);
    let (before, fragment) = back.split_once('#').unwrap();
    assert_eq!(fragment, "/route");
    assert!(
        before.starts_with("http://127.0.0.1:8080/app/?from=singlemessage&code="),
        "{back}"
    );
    assert!(before.ends_with("&state=Ab12"), "{back}");
    code_of(back);

    let empty_state = mock
        .get(&mock.authorize_url(CALLBACK, "snsapi_base", ""), "lilei")
        .await;
    assert!(location(&empty_state).ends_with("&state="));
}

#[tokio::test]
async fn userinfo_consent_page_offers_allow_and_deny() {
    let mock = start_mock(MockConfig {
        secret: Secret::new(SECRET),
        ..MockConfig::default()
    })
    .await;
    let url = mock.authorize_url(CALLBACK, "snsapi_userinfo", "s1");
    let page = mock.get(&url, "hanmeimei").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("允许") && html.contains("拒绝"));
    assert!(html.contains("韩梅梅🌸😀") && html.contains("wxgate 演示服务号"));
    assert_eq!(
        mock.calls("codes_issued").await,
        0,
        "no code before consent"
    );

    let allow = link(&html, "allow");
    let response = mock
        .get(&format!("{}{allow}", mock.base), "hanmeimei")
        .await;
    assert_eq!(response.status(), 302);
    let code = code_of(location(&response));
    let grant = mock.client().exchange_code(&code).await.unwrap();
    assert_eq!(grant.openid, mock.user("hanmeimei").await["openid"]);

    // 拒绝 stays on WeChat's page by default, and goes back with only the state when asked.
    let html = mock.get(&url, "lilei").await.text().await.unwrap();
    let deny = mock
        .get(&format!("{}{}", mock.base, link(&html, "deny")), "lilei")
        .await;
    assert_eq!(deny.status(), 200);
    assert!(deny.text().await.unwrap().contains("拒绝"));
    mock.faults(json!({"deny_redirect": true})).await;
    let html = mock.get(&url, "lilei").await.text().await.unwrap();
    let deny = mock
        .get(&format!("{}{}", mock.base, link(&html, "deny")), "lilei")
        .await;
    assert_eq!(deny.status(), 302);
    assert_eq!(location(&deny), format!("{CALLBACK}?state=s1"));
}

/// The href of the consent page's 允许 or 拒绝 button.
fn link(html: &str, action: &str) -> String {
    let marker = format!("&amp;action={action}\"");
    let end = html.find(&marker).unwrap() + marker.len() - 1;
    let start = html[..end].rfind("href=\"").unwrap() + "href=\"".len();
    html[start..end].replace("&amp;", "&")
}

#[tokio::test]
async fn authorize_errors_are_200_weui_pages_with_wechats_errcode() {
    let mock = auto_mock().await;
    let long_state = "a".repeat(129);
    let cases = [
        (
            mock.authorize_url("https://evil.example.com/cb", "snsapi_base", "s"),
            "错误码:10003",
        ),
        (
            mock.authorize_url(CALLBACK, "snsapi_login", "s"),
            "错误码:10005",
        ),
        (mock.authorize_url(CALLBACK, "", "s"), "错误码:10010"),
        (mock.authorize_url("", "snsapi_base", "s"), "错误码:10011"),
        (
            format!(
                "{}/connect/oauth2/authorize?redirect_uri=x&scope=snsapi_base",
                mock.base
            ),
            "错误码:10012",
        ),
        (
            mock.authorize_url(CALLBACK, "snsapi_base", &long_state),
            "state 参数过长",
        ),
        // WeChat's order is appid, redirect_uri, response_type, scope, state.
        (
            format!(
                "{}/connect/oauth2/authorize?redirect_uri={}&appid={}&response_type=code&scope=snsapi_base&state=s",
                mock.base,
                url::form_urlencoded::byte_serialize(CALLBACK.as_bytes()).collect::<String>(),
                wxgate::mock::MockConfig::default().appid,
            ),
            "该链接无法访问",
        ),
        (
            format!(
                "{}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&state=s&scope=snsapi_base#wechat_redirect",
                mock.base,
                wxgate::mock::MockConfig::default().appid,
                url::form_urlencoded::byte_serialize(CALLBACK.as_bytes()).collect::<String>(),
            ),
            "该链接无法访问",
        ),
    ];
    for (url, expected) in cases {
        let response = mock.get(&url, "lilei").await;
        assert_eq!(response.status(), 200, "{url}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = response.text().await.unwrap();
        assert!(html.contains("<h4 class=\"weui_msg_title\">"), "{html}");
        assert!(html.contains(expected), "{expected} not in {html}");
    }
    assert_eq!(mock.calls("codes_issued").await, 0);
}

/// Collects every log line of this module's tests.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log of this module's tests, from a process-wide subscriber installed on first use.
///
/// Not a per-thread `set_default`: a call site that another test's thread registers while
/// such a subscriber is being installed can cache an interest computed without it, and its
/// events then never reach the test (seen once in a few dozen CI runs, even with the
/// interest cache rebuilt). A global subscriber is part of every interest computed after it
/// is set, and the rebuild below repairs any computed while it was being set.
///
/// The test binary holds every integration test: the subscriber keeps what happens on the
/// threads of this module's tests (libtest names each thread after its test,
/// `wechat_client::…`; their current-thread runtimes run the mock and the client there
/// too), which is what it kept when this module was a binary of its own. The filter is
/// asked per event (a dynamic filter caches no interest), so other tests' events are
/// dropped before they are formatted.
fn binary_log() -> &'static Captured {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter};

    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let ours = filter::filter_fn(|_| {
            std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("wechat_client::"))
        });
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .with_filter(ours),
            )
            .init();
        tracing::callsite::rebuild_interest_cache();
        captured
    })
}

#[tokio::test]
async fn log_lines_name_endpoint_and_errcode_but_no_secret_code_or_token() {
    let log = binary_log();
    // This test's own lines carry the span's name, so the errcode found below is ours and
    // not one another test provoked.
    let span = tracing::info_span!("secret_free_log_test");

    let mock = auto_mock().await;
    let client = mock.client();
    let code = mock.login("snsapi_userinfo", "lilei").await;
    mock.faults(json!({"fail_next": 1})).await;
    let (grant, token) = async {
        let grant = client.exchange_code(&code).await.unwrap();
        let _ = client.exchange_code(&code).await;
        let token = grant.access_token.expose().to_owned();
        let _ = client.userinfo(&token, "o-wrong").await;
        (grant, token)
    }
    .instrument(span)
    .await;

    let logs = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("secret_free_log_test"))
        .collect();
    assert!(
        ours.iter()
            .any(|line| line.contains("/sns/oauth2/access_token") && line.contains("40163")),
        "{logs}"
    );
    // Every line of this module's tests, not only ours: no test may log a secret.
    for secret in [SECRET, code.as_str(), &token, grant.refresh_token.expose()] {
        assert!(
            !logs.contains(secret),
            "a log line carries a secret: {logs}"
        );
    }
}
