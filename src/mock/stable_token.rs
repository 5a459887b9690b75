//! The mock of `POST https://api.weixin.qq.com/cgi-bin/stable_token`, the call `wxgate
//! doctor --call-wechat` makes to prove appid, AppSecret and IP whitelist at once.
//!
//! As at WeChat: POST only (43002 otherwise), a JSON body (47001), `grant_type` must be
//! `client_credential` (40002), then appid (41002 missing, 40013 wrong) and secret (41004,
//! 40125). The token is *stable*: the same one comes back until it expires, with
//! `expires_in` counting down. An IP-whitelist refusal (40164) is injected as a fault
//! (`fail_next`/`fail_errcode`), like every other errcode of the JSON API.

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::faults::Injected;
use super::wire::{self, Body, WxJson};
use super::{Shared, lock};

/// Lifetime of a token, as WeChat gives it.
const TOKEN_TTL_SECS: u64 = 7200;
/// WeChat refuses larger bodies long before this.
const MAX_BODY: usize = 16 * 1024;

pub async fn serve(shared: &Shared, method: &Method, body: Incoming) -> Response<Body> {
    let (fault, behaviour) = {
        let mut faults = lock(&shared.faults);
        (faults.take_api_fault(), faults.clone())
    };
    let now = shared.clock.now();
    let answer = |result: Result<String, i64>| match result {
        Ok(body) => wire::api_response(body, behaviour.content_type),
        Err(errcode) => wire::api_response(
            wire::error_body(errcode, behaviour.errmsg_style, now),
            behaviour.content_type,
        ),
    };
    match fault {
        Some(Injected::Hang) => return std::future::pending().await,
        Some(Injected::HttpStatus(status)) => return wire::gateway_error(status),
        Some(Injected::Garbage) => return wire::html("<html><body>系统繁忙".into()),
        Some(Injected::Errcode(errcode)) => return answer(Err(errcode)),
        None => {}
    }
    if method != Method::POST {
        return answer(Err(43002));
    }
    let bytes: Bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return answer(Err(47001)),
    };
    answer(issue(shared, &bytes, now))
}

fn issue(shared: &Shared, body: &[u8], now: u64) -> Result<String, i64> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|_| 47001)?;
    let field = |name: &str| {
        json.get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if field("grant_type") != Some("client_credential") {
        return Err(40002);
    }
    let config = &shared.config;
    let appid = field("appid").ok_or(41002)?;
    if appid != config.appid {
        return Err(40013);
    }
    let secret = field("secret").ok_or(41004)?;
    if secret != config.secret.expose() {
        return Err(40125);
    }
    let window = now / TOKEN_TTL_SECS;
    let expires_in = TOKEN_TTL_SECS - now % TOKEN_TTL_SECS;
    let token = stable_token(appid, secret, window);
    Ok(WxJson::new()
        .str("access_token", &token)
        .num("expires_in", i64::try_from(expires_in).unwrap_or(7200))
        .finish())
}

/// The same token for one app throughout one lifetime window; WeChat's are long strings of
/// `[A-Za-z0-9_-]` with a numeric prefix.
fn stable_token(appid: &str, secret: &str, window: u64) -> String {
    let digest = Sha256::new()
        .chain_update(appid)
        .chain_update([0])
        .chain_update(secret)
        .chain_update(window.to_be_bytes())
        .finalize();
    let body: String = hex::encode(digest);
    format!("86_{body}{}", &body[..32])
}
