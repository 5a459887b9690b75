//! The mock of api.weixin.qq.com's basic-support calls the JS-SDK needs: `/cgi-bin/token`
//! (each call a new token; the previous one lives five more minutes), `/cgi-bin/stable_token`
//! (POST JSON only; normal mode hands back the live token, force_refresh voids it and is
//! limited per day; isolated from `/cgi-bin/token`'s tokens), `/cgi-bin/ticket/getticket`
//! (`type=jsapi`, 40001 for a voided token, 42001 for an expired one), each with a daily
//! quota (45009) and the account's IP whitelist (40164), as WeChat answers them.

use std::collections::HashMap;
use std::net::SocketAddr;

use http::Response;

use super::api::Params;
use super::faults::{Faults, Injected, Stats};
use super::store::{new_token, random_alnum};
use super::wire::{self, Body, WxJson};
use super::{Shared, lock};

/// How long the previous `/cgi-bin/token` token keeps working after a new one is issued.
const TOKEN_OVERLAP_SECS: u64 = 300;

/// The basic-support endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgiEndpoint {
    Token,
    StableToken,
    Ticket,
}

impl CgiEndpoint {
    fn quota(self, faults: &Faults) -> u64 {
        match self {
            CgiEndpoint::Token => faults.token_daily_quota,
            CgiEndpoint::StableToken => faults.stable_token_daily_quota,
            CgiEndpoint::Ticket => faults.ticket_daily_quota,
        }
    }
}

/// What the mock account has issued, and how much of each day's quota is spent.
#[derive(Debug, Default)]
pub struct Basic {
    /// Live tokens of either kind, by value: (expires_at, from stable_token).
    tokens: HashMap<String, (u64, bool)>,
    /// The stable token normal mode hands back while it lives.
    stable: Option<String>,
    /// The latest `/cgi-bin/token` token.
    plain: Option<String>,
    /// Tickets and their ends; the jweixin stand-in accepts any live one.
    tickets: HashMap<String, u64>,
    /// Calls per endpoint on the current day (Beijing midnight resets).
    calls: HashMap<CgiEndpoint, u64>,
    day: u64,
    force_refreshes: u64,
}

impl Basic {
    /// The live tickets, for the stand-in's check.
    pub fn live_tickets(&self, now: u64) -> Vec<String> {
        self.tickets
            .iter()
            .filter(|(_, end)| now < **end)
            .map(|(ticket, _)| ticket.clone())
            .collect()
    }

    /// Counts one call against the day's quota; `false` once it is spent.
    fn spend(&mut self, endpoint: CgiEndpoint, quota: u64, now: u64) -> bool {
        // WeChat's day turns at midnight in Beijing (UTC+8).
        let day = (now + 8 * 3600) / 86_400;
        if day != self.day {
            self.day = day;
            self.calls.clear();
            self.force_refreshes = 0;
        }
        let used = self.calls.entry(endpoint).or_insert(0);
        if *used >= quota {
            return false;
        }
        *used += 1;
        true
    }
}

pub async fn serve(
    shared: &Shared,
    endpoint: CgiEndpoint,
    method: &http::Method,
    query: &str,
    body: Option<bytes::Bytes>,
    peer: Option<SocketAddr>,
) -> Response<Body> {
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
    let result = match endpoint {
        CgiEndpoint::Token => token(shared, &Params::parse(query), &behaviour, peer, now),
        CgiEndpoint::StableToken => stable_token(shared, method, body, &behaviour, peer, now),
        CgiEndpoint::Ticket => ticket(shared, &Params::parse(query), &behaviour, now),
    };
    let body = result.unwrap_or_else(|refusal| match refusal {
        Refusal::Errcode(errcode) => wire::error_body(errcode, behaviour.errmsg_style, now),
        Refusal::NotWhitelisted(ip) => not_whitelisted(&ip),
    });
    wire::api_response(body, behaviour.content_type)
}

enum Refusal {
    Errcode(i64),
    /// 40164, whose errmsg names the caller's address.
    NotWhitelisted(String),
}

impl From<i64> for Refusal {
    fn from(errcode: i64) -> Self {
        Refusal::Errcode(errcode)
    }
}

type CgiResult = Result<String, Refusal>;

fn counter(shared: &Shared, endpoint: CgiEndpoint) -> &std::sync::atomic::AtomicU64 {
    let stats = &shared.stats;
    match endpoint {
        CgiEndpoint::Token => &stats.cgi_token,
        CgiEndpoint::StableToken => &stats.stable_token,
        CgiEndpoint::Ticket => &stats.getticket,
    }
}

/// WeChat's wording, the address as it saw it (IPv4 also as mapped IPv6).
fn not_whitelisted(ip: &str) -> String {
    let v6 = if ip.contains(':') {
        ip.to_owned()
    } else {
        format!("::ffff:{ip}")
    };
    WxJson::new()
        .num("errcode", 40164)
        .str(
            "errmsg",
            &format!(
                "invalid ip {ip} ipv6 {v6}, not in whitelist rid: {}",
                random_alnum(24)
            ),
        )
        .finish()
}

/// Checks the credentials and the whitelist, in WeChat's order: appid, secret, address.
fn check_account(
    shared: &Shared,
    appid: Option<&str>,
    secret: Option<&str>,
    behaviour: &Faults,
    peer: Option<SocketAddr>,
) -> Result<(), Refusal> {
    let config = &shared.config;
    let appid = appid.ok_or(41002)?;
    let secret = secret.ok_or(41004)?;
    if appid != config.appid {
        return Err(40013.into());
    }
    if secret != config.secret.expose() {
        return Err(40125.into());
    }
    let ip = peer.map_or_else(
        || "0.0.0.0".to_owned(),
        |p| p.ip().to_canonical().to_string(),
    );
    if !behaviour.ip_whitelist.contains(&ip) {
        return Err(Refusal::NotWhitelisted(ip));
    }
    Ok(())
}

/// `/cgi-bin/token?grant_type=client_credential&appid&secret`.
fn token(
    shared: &Shared,
    params: &Params,
    behaviour: &Faults,
    peer: Option<SocketAddr>,
    now: u64,
) -> CgiResult {
    if params.get("grant_type") != Some("client_credential") {
        return Err(40002.into());
    }
    check_account(
        shared,
        params.get("appid"),
        params.get("secret"),
        behaviour,
        peer,
    )?;
    let mut basic = lock(&shared.basic);
    if !basic.spend(CgiEndpoint::Token, CgiEndpoint::Token.quota(behaviour), now) {
        return Err(45009.into());
    }
    // A new token each time; the one before keeps working for five minutes.
    if let Some(previous) = basic.plain.take() {
        if let Some((end, _)) = basic.tokens.get_mut(&previous) {
            *end = (*end).min(now + TOKEN_OVERLAP_SECS);
        }
    }
    let token = new_token();
    let ttl = behaviour.basic_token_ttl_secs;
    basic.tokens.insert(token.clone(), (now + ttl, false));
    basic.plain = Some(token.clone());
    Ok(token_json(&token, ttl))
}

fn token_json(token: &str, expires_in: u64) -> String {
    WxJson::new()
        .str("access_token", token)
        .num("expires_in", i64::try_from(expires_in).unwrap_or(i64::MAX))
        .finish()
}

/// `POST /cgi-bin/stable_token` with `{"grant_type","appid","secret","force_refresh"}`.
fn stable_token(
    shared: &Shared,
    method: &http::Method,
    body: Option<bytes::Bytes>,
    behaviour: &Faults,
    peer: Option<SocketAddr>,
    now: u64,
) -> CgiResult {
    if method != http::Method::POST {
        return Err(43002.into());
    }
    let Some(request) = body
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter(serde_json::Value::is_object)
    else {
        return Err(47001.into());
    };
    let field = |key: &str| {
        request
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if field("grant_type") != Some("client_credential") {
        return Err(40002.into());
    }
    let force = match request.get("force_refresh") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(force)) => *force,
        Some(_) => return Err(47001.into()),
    };
    check_account(shared, field("appid"), field("secret"), behaviour, peer)?;
    let mut basic = lock(&shared.basic);
    let quota = CgiEndpoint::StableToken.quota(behaviour);
    if !basic.spend(CgiEndpoint::StableToken, quota, now) {
        return Err(45009.into());
    }
    let current = basic
        .stable
        .clone()
        .and_then(|t| basic.tokens.get(&t).map(|(end, _)| (t, *end)))
        .filter(|(_, end)| now < *end);
    if let (Some((token, end)), false) = (&current, force) {
        // Normal mode: the same token, with what is left of its life.
        return Ok(token_json(token, end - now));
    }
    if force {
        if basic.force_refreshes >= behaviour.force_refresh_daily_limit {
            return Err(45009.into());
        }
        basic.force_refreshes += 1;
        // Forcing voids the previous stable token at once, for every caller.
        if let Some((old, _)) = current {
            basic.tokens.remove(&old);
        }
    }
    let token = new_token();
    let ttl = behaviour.basic_token_ttl_secs;
    basic.tokens.insert(token.clone(), (now + ttl, true));
    basic.stable = Some(token.clone());
    Ok(token_json(&token, ttl))
}

/// `/cgi-bin/ticket/getticket?access_token&type=jsapi`.
fn ticket(shared: &Shared, params: &Params, behaviour: &Faults, now: u64) -> CgiResult {
    let token = params.get("access_token").ok_or(41001)?;
    let mut basic = lock(&shared.basic);
    match basic.tokens.get(token) {
        None => return Err(40001.into()),
        Some((end, _)) if now >= *end => return Err(42001.into()),
        Some(_) => {}
    }
    if !matches!(params.get("type"), Some("jsapi" | "wx_card")) {
        return Err(40097.into());
    }
    if !basic.spend(
        CgiEndpoint::Ticket,
        CgiEndpoint::Ticket.quota(behaviour),
        now,
    ) {
        return Err(45009.into());
    }
    basic.tickets.retain(|_, end| now < *end);
    let ticket = new_ticket();
    let ttl = behaviour.jsapi_ticket_ttl_secs;
    basic.tickets.insert(ticket.clone(), now + ttl);
    Ok(WxJson::new()
        .num("errcode", 0)
        .str("errmsg", "ok")
        .str("ticket", &ticket)
        .num("expires_in", i64::try_from(ttl).unwrap_or(i64::MAX))
        .finish())
}

/// 86 characters of base64url, as jsapi_tickets look.
fn new_ticket() -> String {
    let token = new_token();
    format!("{}{}", random_alnum(8), &token[3..81])
}
