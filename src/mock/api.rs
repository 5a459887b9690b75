//! The mock of api.weixin.qq.com `/sns/*`: parameter checks in WeChat's order, the code
//! and token lifecycle, and injected faults. Errcode errors are HTTP 200, as WeChat does.

use std::collections::HashMap;

use http::Response;

use super::faults::{Faults, Injected, Stats};
use super::store::{AccessEntry, CodeUse, Grant, Lookup, RefreshEntry, Scope, Store};
use super::users::{SNAPSHOT_HEADIMGURL, SNAPSHOT_NICKNAME};
use super::wire::{self, Body, WxJson};
use super::{Shared, lock};

/// The JSON endpoints the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiEndpoint {
    AccessToken,
    RefreshToken,
    UserInfo,
    Auth,
}

/// An errcode answer, or the body of a success.
type ApiResult = Result<String, i64>;

/// The first value of each query parameter; empty values count as missing, as at WeChat.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(query: &str) -> Self {
        let mut map = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            map.entry(key.into_owned())
                .or_insert_with(|| value.into_owned());
        }
        map.retain(|_, value: &mut String| !value.is_empty());
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

pub async fn serve(shared: &Shared, endpoint: ApiEndpoint, query: &str) -> Response<Body> {
    Stats::bump(counter(shared, endpoint));
    let (fault, behaviour) = {
        let mut faults = lock(&shared.faults);
        (faults.take_api_fault(), faults.clone())
    };
    let latency = behaviour.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let now = shared.clock.now();
    match fault {
        Some(Injected::Hang) => return std::future::pending().await,
        Some(Injected::HttpStatus(status)) => return wire::gateway_error(status),
        Some(Injected::Garbage) => {
            return wire::html("<html><body><h1>系统繁忙</h1><p>\u{7}not json".into());
        }
        Some(Injected::Errcode(errcode)) => {
            let body = wire::error_body(errcode, behaviour.errmsg_style, now);
            return wire::api_response(body, behaviour.content_type);
        }
        None => {}
    }
    let params = Params::parse(query);
    let result = match endpoint {
        ApiEndpoint::AccessToken => access_token(shared, &params, &behaviour, now),
        ApiEndpoint::RefreshToken => refresh_token(shared, &params, &behaviour, now),
        ApiEndpoint::UserInfo => userinfo(shared, &params, &behaviour, now),
        ApiEndpoint::Auth => auth(shared, &params, &behaviour, now),
    };
    let body =
        result.unwrap_or_else(|errcode| wire::error_body(errcode, behaviour.errmsg_style, now));
    wire::api_response(
        wire::with_escapes(body, behaviour.escapes),
        behaviour.content_type,
    )
}

fn counter(shared: &Shared, endpoint: ApiEndpoint) -> &std::sync::atomic::AtomicU64 {
    let stats = &shared.stats;
    match endpoint {
        ApiEndpoint::AccessToken => &stats.access_token,
        ApiEndpoint::RefreshToken => &stats.refresh_token,
        ApiEndpoint::UserInfo => &stats.userinfo,
        ApiEndpoint::Auth => &stats.auth,
    }
}

/// `/sns/oauth2/access_token?appid&secret&code&grant_type=authorization_code`
fn access_token(shared: &Shared, params: &Params, behaviour: &Faults, now: u64) -> ApiResult {
    let config = &shared.config;
    let appid = params.get("appid").ok_or(41002)?;
    let secret = params.get("secret").ok_or(41004)?;
    let code = params.get("code").ok_or(41008)?;
    if params.get("grant_type") != Some("authorization_code") {
        return Err(40002);
    }
    if appid != config.appid {
        return Err(40013);
    }
    if secret != config.secret.expose() {
        return Err(40125);
    }
    let mut store = lock(&shared.store);
    let grant = match store.take_code(code, now, config.code_ttl.as_secs()) {
        CodeUse::Fresh(grant) => grant,
        CodeUse::Used if behaviour.reused_code_as_invalid => return Err(40029),
        CodeUse::Used => return Err(40163),
        CodeUse::Expired if behaviour.strict_code_expiry => return Err(42003),
        CodeUse::Expired | CodeUse::Unknown => return Err(40029),
    };
    let (access, refresh) = issue_tokens(shared, &mut store, &grant, now);
    drop(store);
    Stats::bump(&shared.stats.codes_exchanged);
    let mut json = grant_json(shared, &access, &refresh, &grant);
    if grant.scope == Scope::UserInfo {
        if let Some(unionid) = unionid(shared, &grant) {
            json = json.str("unionid", &unionid);
        }
    }
    if grant.snapshot {
        json = json.num("is_snapshotuser", 1);
    }
    Ok(json.finish())
}

/// `/sns/oauth2/refresh_token?appid&grant_type=refresh_token&refresh_token` (no secret).
fn refresh_token(shared: &Shared, params: &Params, behaviour: &Faults, now: u64) -> ApiResult {
    let config = &shared.config;
    let appid = params.get("appid").ok_or(41002)?;
    let refresh = params.get("refresh_token").ok_or(41003)?;
    if params.get("grant_type") != Some("refresh_token") {
        return Err(40002);
    }
    if appid != config.appid {
        return Err(40013);
    }
    let mut store = lock(&shared.store);
    let entry = match store.refresh(refresh, now) {
        Lookup::Valid(entry) => entry,
        Lookup::Expired(_) => return Err(42002),
        Lookup::Unknown => return Err(40030),
    };
    let access_expiry = now + config.access_token_ttl.as_secs();
    let keep_access = behaviour.refresh_mode == super::faults::RefreshMode::Extend
        && matches!(store.access(&entry.access_token, now), Lookup::Valid(_));
    let access = if keep_access {
        store.extend_access(&entry.access_token, access_expiry);
        entry.access_token.clone()
    } else {
        store.insert_access(entry.grant.clone(), access_expiry)
    };
    let refresh_expiry = if behaviour.refresh_resets_expiry {
        now + config.refresh_token_ttl.as_secs()
    } else {
        entry.expires_at
    };
    store.update_refresh(refresh, access.clone(), refresh_expiry);
    drop(store);
    Ok(grant_json(shared, &access, refresh, &entry.grant).finish())
}

/// `/sns/userinfo?access_token&openid[&lang]`
fn userinfo(shared: &Shared, params: &Params, behaviour: &Faults, now: u64) -> ApiResult {
    let token = params.get("access_token").ok_or(41001)?;
    let openid = params.get("openid").ok_or(41009)?;
    let entry = valid_access(shared, token, behaviour, now)?;
    let grant = &entry.grant;
    if grant.openid != openid {
        return Err(40003);
    }
    if grant.scope == Scope::Base || (grant.snapshot && behaviour.snapshot_userinfo_denied) {
        return Err(48001);
    }
    let user = &grant.user;
    let (nickname, headimgurl) = if grant.snapshot {
        (SNAPSHOT_NICKNAME.to_owned(), SNAPSHOT_HEADIMGURL.to_owned())
    } else {
        (
            user.nickname().to_owned(),
            user.headimgurl(shared.config.avatar_origin.as_deref()),
        )
    };
    // Since 2021-10-20 sex is 0 and the regions are empty; there is no `language` field.
    let json = WxJson::new().str("openid", &grant.openid);
    let json = match super::users::escaped_nickname(user.id()).filter(|_| !grant.snapshot) {
        Some(escaped) => json.raw("nickname", escaped),
        None => json.str("nickname", &nickname),
    };
    let mut json = json
        .num("sex", 0)
        .str("province", "")
        .str("city", "")
        .str("country", "")
        .str("headimgurl", &headimgurl)
        .strs("privilege", &[]);
    if let Some(unionid) = unionid(shared, grant) {
        json = json.str("unionid", &unionid);
    }
    Ok(json.finish())
}

/// `/sns/auth?access_token&openid`
fn auth(shared: &Shared, params: &Params, behaviour: &Faults, now: u64) -> ApiResult {
    let token = params.get("access_token").ok_or(41001)?;
    let openid = params.get("openid").ok_or(41009)?;
    let entry = valid_access(shared, token, behaviour, now)?;
    if entry.grant.openid != openid {
        return Err(40003);
    }
    Ok(WxJson::new().num("errcode", 0).str("errmsg", "ok").finish())
}

fn valid_access(
    shared: &Shared,
    token: &str,
    behaviour: &Faults,
    now: u64,
) -> Result<AccessEntry, i64> {
    match lock(&shared.store).access(token, now) {
        Lookup::Valid(entry) => Ok(entry),
        Lookup::Expired(_) => Err(42001),
        Lookup::Unknown if behaviour.unknown_token_as_40014 => Err(40014),
        Lookup::Unknown => Err(40001),
    }
}

fn issue_tokens(shared: &Shared, store: &mut Store, grant: &Grant, now: u64) -> (String, String) {
    let config = &shared.config;
    let access = store.insert_access(grant.clone(), now + config.access_token_ttl.as_secs());
    let entry = RefreshEntry {
        grant: grant.clone(),
        expires_at: now + config.refresh_token_ttl.as_secs(),
        access_token: access.clone(),
    };
    let refresh = store.insert_refresh(entry, now, config.code_ttl.as_secs());
    (access, refresh)
}

/// The fields common to both token endpoints, in WeChat's order.
fn grant_json(shared: &Shared, access: &str, refresh: &str, grant: &Grant) -> WxJson {
    let expires_in = i64::try_from(shared.config.access_token_ttl.as_secs()).unwrap_or(7200);
    WxJson::new()
        .str("access_token", access)
        .num("expires_in", expires_in)
        .str("refresh_token", refresh)
        .str("openid", &grant.openid)
        .str("scope", grant.scope.as_str())
}

/// Only an app bound to an Open Platform account sees unionids.
fn unionid(shared: &Shared, grant: &Grant) -> Option<String> {
    let config = &shared.config;
    config
        .open_platform_id
        .as_deref()
        .and_then(|platform| grant.user.unionid(platform, grant.snapshot))
}
