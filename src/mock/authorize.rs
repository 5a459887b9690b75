//! The mock of open.weixin.qq.com `/connect/oauth2/authorize`: parameter validation with
//! WeChat's error pages, silent snsapi_base, the snsapi_userinfo consent sheet (or
//! automatic consent), 允许/拒绝, and the 302 back with `code` and `state` before any `#fragment`.

use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

use super::api::Params;
use super::faults::{DoubleLoad, Faults, Stats};
use super::html::{self, PickerEntry};
use super::store::{Grant, Scope, Ticket};
use super::users::{MockUser, USERS};
use super::wire::{self, Body};
use super::{MockConfig, Shared, lock};

/// The cookie (on the mock's origin) that says which user is logged in to "WeChat".
pub const USER_COOKIE: &str = "mock_user";
const STATE_MAX_BYTES: usize = 128;
const UNREACHABLE_LINK: &str = "该链接无法访问";

/// Characters a Location header cannot carry raw; everything else of redirect_uri is kept.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ');
/// `state` goes back as a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request that passed validation.
struct Authorize<'a> {
    redirect_uri: &'a str,
    scope: Scope,
    state: &'a str,
}

/// An error page: WeChat's message and, when it has one, the errcode.
struct PageError(&'static str, Option<u32>);

impl PageError {
    fn code(errcode: u32) -> Self {
        PageError(authorize_errcode_text(errcode), Some(errcode))
    }
}

pub async fn authorize(shared: &Shared, query: &str, headers: &HeaderMap) -> Response<Body> {
    Stats::bump(&shared.stats.authorize);
    let behaviour = lock(&shared.faults).clone();
    let params = Params::parse(query);
    let request = match validate(&shared.config, &params, headers, &behaviour).and_then(|request| {
        in_wechat_order(query)
            .then_some(request)
            .ok_or(PageError(UNREACHABLE_LINK, None))
    }) {
        Ok(request) => request,
        Err(PageError(message, errcode)) => return wire::html(html::error_page(message, errcode)),
    };
    let (user, chosen_by_query) = pick_user(shared, &params, headers);
    let snapshot =
        behaviour.snapshot || user.always_snapshot() || params.get("forceSnapShot") == Some("true");
    let grant = Grant {
        user: user.clone(),
        openid: user.openid(&shared.config.appid, snapshot),
        scope: request.scope,
        snapshot,
    };
    // snsapi_base is silent; a snapshot page shows no popup either.
    let silent = request.scope == Scope::Base || snapshot;
    let mut response = if silent || (!behaviour.deny && shared.config.auto_consent) {
        let back = Back {
            redirect_uri: request.redirect_uri,
            state: request.state,
            visitor: headers,
        };
        hand_over_code(shared, &behaviour, grant, back).await
    } else if behaviour.deny {
        denied(&behaviour, request.redirect_uri, request.state)
    } else {
        consent(shared, grant, &request, query, &user)
    };
    if chosen_by_query {
        let cookie = format!("{USER_COOKIE}={}; Path=/; SameSite=Lax", user.id());
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `/connect/oauth2/authorize_reply?ticket&action=allow|deny`: the buttons of the consent sheet.
pub async fn reply(shared: &Shared, query: &str, headers: &HeaderMap) -> Response<Body> {
    Stats::bump(&shared.stats.authorize_reply);
    let params = Params::parse(query);
    let now = shared.clock.now();
    let ticket = params
        .get("ticket")
        .and_then(|id| lock(&shared.store).take_ticket(id, now));
    let Some(ticket) = ticket else {
        return wire::html(html::error_page("授权已过期，请重新进入页面", None));
    };
    let behaviour = lock(&shared.faults).clone();
    if params.get("action") == Some("allow") {
        let back = Back {
            redirect_uri: &ticket.redirect_uri,
            state: &ticket.state,
            visitor: headers,
        };
        hand_over_code(shared, &behaviour, ticket.grant, back).await
    } else {
        denied(&behaviour, &ticket.redirect_uri, &ticket.state)
    }
}

/// Checks in the order WeChat reports them: missing parameters, app, domain, scope, state.
fn validate<'a>(
    config: &MockConfig,
    params: &'a Params,
    headers: &HeaderMap,
    behaviour: &Faults,
) -> Result<Authorize<'a>, PageError> {
    if let Some(errcode) = behaviour.authorize_errcode {
        return Err(PageError::code(errcode));
    }
    if behaviour.require_wechat_ua && !is_wechat_browser(headers) {
        return Err(PageError("请在微信客户端打开链接", None));
    }
    let appid = params.get("appid").ok_or(PageError::code(10012))?;
    let redirect_uri = params.get("redirect_uri").ok_or(PageError::code(10011))?;
    let scope = params.get("scope").ok_or(PageError::code(10010))?;
    if appid != config.appid || params.get("response_type") != Some("code") {
        return Err(PageError(UNREACHABLE_LINK, None));
    }
    if !redirect_allowed(config, redirect_uri) {
        return Err(PageError::code(10003));
    }
    let scope = Scope::parse(scope).ok_or(PageError::code(10005))?;
    let state = params.get("state").unwrap_or("");
    if state.len() > STATE_MAX_BYTES {
        return Err(PageError("state 参数过长", None));
    }
    if behaviour.strict_state && !state.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(PageError(UNREACHABLE_LINK, None));
    }
    Ok(Authorize {
        redirect_uri,
        scope,
        state,
    })
}

/// WeChat reads the parameters in its documented order — appid, redirect_uri,
/// response_type, scope, state — and answers a link with them reordered by "该链接无法访问".
/// Other parameters (`connect_redirect`, `forcePopup`, the mock's `mock_user`) may be anywhere.
fn in_wechat_order(query: &str) -> bool {
    const ORDER: [&str; 5] = ["appid", "redirect_uri", "response_type", "scope", "state"];
    let positions = url::form_urlencoded::parse(query.as_bytes())
        .filter_map(|(key, _)| ORDER.iter().position(|name| *name == key));
    let mut last = None;
    for position in positions {
        if last.is_some_and(|last| position <= last) {
            return false;
        }
        last = Some(position);
    }
    true
}

fn is_wechat_browser(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|ua| ua.to_str().ok())
        .is_some_and(|ua| ua.contains("MicroMessenger"))
}

/// WeChat checks the host against the 网页授权域名 exactly and refuses ports. Loopback is
/// accepted with any port by default so the mock works on a developer machine.
pub(crate) fn redirect_allowed(config: &MockConfig, redirect_uri: &str) -> bool {
    let Ok(url) = url::Url::parse(redirect_uri) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    if config.accept_any_redirect {
        return true;
    }
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    if loopback && config.loopback_any_port {
        return true;
    }
    url.port().is_none()
        && config
            .authorized_domains
            .iter()
            .any(|domain| domain.eq_ignore_ascii_case(host))
}

/// The user from `?mock_user=`, else the cookie, else the default (fixtures or created users).
fn pick_user(shared: &Shared, params: &Params, headers: &HeaderMap) -> (MockUser, bool) {
    let users = &shared.users;
    let from_query = params.get("mock_user").and_then(|id| users.find(id));
    let chosen_by_query = from_query.is_some();
    let user = from_query
        .or_else(|| crate::login::cookies::read(headers, USER_COOKIE).and_then(|id| users.find(id)))
        .or_else(|| users.find(&shared.config.default_user))
        .unwrap_or(MockUser::Fixture(&USERS[0]));
    (user, chosen_by_query)
}

/// Where a granted login goes back to, and the browser that asked.
struct Back<'a> {
    redirect_uri: &'a str,
    state: &'a str,
    visitor: &'a HeaderMap,
}

/// Issues the code and sends the browser back with it: a 302, or with `double_load` a page
/// that loads the callback twice. With `prefetch`, the mock has loaded the callback itself
/// (no cookies) before the browser hears of the code.
async fn hand_over_code(
    shared: &Shared,
    behaviour: &Faults,
    grant: Grant,
    back: Back<'_>,
) -> Response<Body> {
    let now = shared.clock.now();
    let code = lock(&shared.store).insert_code(grant, now, shared.config.code_ttl.as_secs());
    Stats::bump(&shared.stats.codes_issued);
    let location = callback_location(back.redirect_uri, Some(&code), back.state);
    if behaviour.prefetch {
        prefetch(shared, &location, back.visitor).await;
    }
    match behaviour.double_load {
        DoubleLoad::Off => wire::redirect(&location),
        DoubleLoad::Sequential => wire::html(html::double_load_page(&location, false)),
        DoubleLoad::Concurrent => wire::html(html::double_load_page(&location, true)),
    }
}

/// One GET of the callback as Tencent's fetchers make it: the visitor's User-Agent and
/// `X-Requested-With`, no cookies, redirects not followed. Its outcome does not matter to
/// the visitor; what matters is whether the gateway spent the code on it.
async fn prefetch(shared: &Shared, location: &str, visitor: &HeaderMap) {
    Stats::bump(&shared.stats.prefetches);
    let Some(client) = &shared.fetcher else {
        return;
    };
    let mut request = client.get(location);
    for name in [
        header::USER_AGENT,
        HeaderName::from_static("x-requested-with"),
    ] {
        if let Some(value) = visitor.get(&name) {
            request = request.header(name, value.clone());
        }
    }
    if let Err(error) = request.send().await {
        // The URL carries the code: never in a log line.
        tracing::debug!(error = %error.without_url(), "mock WeChat: prefetch of the callback failed");
    }
}

/// 拒绝: stays on WeChat's page (observed), or goes back with only `state` (documented).
fn denied(behaviour: &Faults, redirect_uri: &str, state: &str) -> Response<Body> {
    if behaviour.deny_redirect {
        wire::redirect(&callback_location(redirect_uri, None, state))
    } else {
        wire::html(html::denied_page())
    }
}

fn consent(
    shared: &Shared,
    grant: Grant,
    request: &Authorize<'_>,
    query: &str,
    user: &MockUser,
) -> Response<Body> {
    let ticket = Ticket {
        grant,
        redirect_uri: request.redirect_uri.to_owned(),
        state: request.state.to_owned(),
        created_at: shared.clock.now(),
    };
    let id = lock(&shared.store).insert_ticket(ticket, shared.config.code_ttl.as_secs());
    let reply =
        |action: &str| format!("/connect/oauth2/authorize_reply?ticket={id}&action={action}");
    let picker: Vec<PickerEntry> = USERS
        .iter()
        .map(|candidate| PickerEntry {
            user: candidate,
            href: switch_user_href(query, candidate.id),
            current: candidate.id == user.id(),
        })
        .collect();
    let page = html::consent_page(
        &shared.config.app_name,
        user,
        &reply("allow"),
        &reply("deny"),
        &picker,
    );
    wire::html(page)
}

/// The same authorize request as another user.
fn switch_user_href(query: &str, user_id: &str) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != "mock_user" {
            serializer.append_pair(&key, &value);
        }
    }
    serializer.append_pair("mock_user", user_id);
    format!("/connect/oauth2/authorize?{}", serializer.finish())
}

/// `redirect_uri` with `code` and `state` appended to its query, before any `#fragment`.
pub(crate) fn callback_location(redirect_uri: &str, code: Option<&str>, state: &str) -> String {
    let (base, fragment) = match redirect_uri.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (redirect_uri, None),
    };
    let mut location = utf8_percent_encode(base, HEADER_UNSAFE).to_string();
    if !base.contains('?') {
        location.push('?');
    } else if !base.ends_with('?') && !base.ends_with('&') {
        location.push('&');
    }
    if let Some(code) = code {
        location.push_str("code=");
        location.push_str(code);
        location.push('&');
    }
    location.push_str("state=");
    location.extend(utf8_percent_encode(state, QUERY_VALUE));
    if let Some(fragment) = fragment {
        location.push('#');
        location.extend(utf8_percent_encode(fragment, HEADER_UNSAFE));
    }
    location
}

fn authorize_errcode_text(errcode: u32) -> &'static str {
    match errcode {
        10003 => "redirect_uri域名与后台配置不一致",
        10004 => "此公众号被封禁",
        10005 => "此公众号并没有这些scope的权限",
        10006 => "必须关注此测试号",
        10009 => "操作太频繁了，请稍后重试",
        10010 => "scope不能为空",
        10011 => "redirect_uri不能为空",
        10012 => "appid不能为空",
        10013 => "state不能为空",
        10015 => "公众号未授权第三方平台，请检查授权状态",
        10016 => "不支持微信开放平台的Appid，请使用公众号Appid",
        _ => "系统错误",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_state_go_before_the_fragment_and_after_an_existing_query() {
        let cases = [
            (
                "https://x.test/cb",
                Some("C"),
                "S",
                "https://x.test/cb?code=C&state=S",
            ),
            (
                "https://x.test/#/login",
                Some("C"),
                "S",
                "https://x.test/?code=C&state=S#/login",
            ),
            (
                "https://x.test/p?a=1",
                Some("C"),
                "",
                "https://x.test/p?a=1&code=C&state=",
            ),
            (
                "https://x.test/p?",
                Some("C"),
                "S",
                "https://x.test/p?code=C&state=S",
            ),
            (
                "https://x.test/p?a=1#f",
                None,
                "S",
                "https://x.test/p?a=1&state=S#f",
            ),
            (
                "https://x.test/页",
                None,
                "a b&c",
                "https://x.test/%E9%A1%B5?state=a%20b%26c",
            ),
        ];
        for (uri, code, state, expected) in cases {
            assert_eq!(callback_location(uri, code, state), expected, "{uri}");
        }
    }

    #[test]
    fn redirect_domains_are_exact_without_port_except_loopback() {
        let config = MockConfig {
            authorized_domains: vec!["m.example.com".into()],
            ..MockConfig::default()
        };
        let cases = [
            ("https://m.example.com/cb", true),
            ("https://M.EXAMPLE.COM/cb", true),
            ("https://m.example.com:8443/cb", false),
            ("https://pay.example.com/cb", false),
            ("https://example.com/cb", false),
            ("http://127.0.0.1:8080/cb", true),
            ("http://localhost:3000/cb", true),
            ("javascript:alert(1)", false),
            ("not a url", false),
        ];
        for (uri, allowed) in cases {
            assert_eq!(redirect_allowed(&config, uri), allowed, "{uri}");
        }
        let strict = MockConfig {
            loopback_any_port: false,
            ..config
        };
        assert!(!redirect_allowed(&strict, "http://127.0.0.1:8080/cb"));
    }
}
