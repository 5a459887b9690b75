//! The mock's run-time switches (faults to inject and behaviour variants) and its call
//! counters. Both are set by CLI flags and read or changed at run time through
//! `/_mock/faults` and `/_mock/stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Content-Type the JSON API answers with; real WeChat mostly says `text/plain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ContentTypeVariant {
    #[default]
    Plain,
    JsonEncoding,
    JsonCharset,
}

impl ContentTypeVariant {
    pub fn header_value(self) -> &'static str {
        match self {
            ContentTypeVariant::Plain => "text/plain",
            ContentTypeVariant::JsonEncoding => "application/json; encoding=utf-8",
            ContentTypeVariant::JsonCharset => "application/json; charset=utf-8",
        }
    }
}

/// The suffix WeChat appended to errmsg in its different eras.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ErrmsgStyle {
    None,
    #[default]
    Rid,
    Hints,
    Hint,
}

/// How `/sns/oauth2/refresh_token` treats a still-valid access token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshMode {
    /// Always issue a new access token.
    #[default]
    Rotate,
    /// Return the same access token with its expiry reset while it is still valid.
    Extend,
}

/// How the answer to a granted authorize brings the browser back to the callback.
/// WeChat's webviews load the callback twice, at once or one after the other (Android above
/// all: w7corp/easywechat#963, WxJava#388); a gateway must land both loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DoubleLoad {
    /// One 302, one load.
    #[default]
    Off,
    /// A page that loads the callback in the background and, once that was answered, again.
    Sequential,
    /// A page that loads the callback in the background and, at the same moment, again.
    Concurrent,
}

/// How the JSON API writes characters outside ASCII.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Escapes {
    /// UTF-8 as is (today's API).
    #[default]
    Raw,
    /// Every non-ASCII character as `\uXXXX`, astral ones as surrogate pairs (older endpoints,
    /// PHP's `json_encode`).
    Ascii,
    /// As `ascii`, and every astral character (emoji) cut in half: only its high surrogate
    /// is written, as in nicknames WeChat truncated mid-emoji.
    CutEmoji,
}

/// How the simulated WeChat client behaves at the callback, and how the API writes text:
/// flags shared by `wxgate mock-wechat` and `wxgate demo`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Quirks {
    /// Before the browser gets its code, load the callback URL with it once, without cookies
    /// (Tencent's fetchers, seen on Android).
    #[arg(long)]
    pub prefetch: bool,
    /// Bring the browser back to the callback twice: one after the other, or at once.
    #[arg(long, value_enum, default_value_t = DoubleLoad::Off)]
    pub double_load: DoubleLoad,
    /// Write non-ASCII characters of the JSON API as `\u` escapes (`ascii`), and cut emoji
    /// to a lone surrogate (`cut-emoji`).
    #[arg(long, value_enum, default_value_t = Escapes::Raw)]
    pub escapes: Escapes,
}

impl Quirks {
    /// These flags set on `faults`.
    pub fn apply(&self, faults: &mut Faults) {
        faults.prefetch = self.prefetch;
        faults.double_load = self.double_load;
        faults.escapes = self.escapes;
    }
}

/// Faults and behaviour switches. `POST /_mock/faults` merges the given keys into these.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Delay before every JSON API answer.
    pub latency_ms: u64,
    /// Answer the next N JSON API calls with `fail_errcode` (HTTP 200).
    pub fail_next: u32,
    pub fail_errcode: i64,
    /// Answer the next N JSON API calls with HTTP `http_error_status`.
    pub http_error_next: u32,
    pub http_error_status: u16,
    /// Answer the next N JSON API calls with a non-JSON body.
    pub garbage_next: u32,
    /// Never answer the next N JSON API calls.
    pub hang_next: u32,
    /// Every login comes back as a 快照页 virtual account.
    pub snapshot: bool,
    /// The simulated user refuses snsapi_userinfo consent.
    pub deny: bool,
    /// 拒绝 redirects to `redirect_uri?state=STATE` (documented) instead of staying (observed).
    pub deny_redirect: bool,
    pub content_type: ContentTypeVariant,
    pub errmsg_style: ErrmsgStyle,
    pub refresh_mode: RefreshMode,
    /// A refresh also resets the refresh_token's 30 days.
    pub refresh_resets_expiry: bool,
    /// A reused code answers 40029 instead of 40163 (WeChat mixes both).
    pub reused_code_as_invalid: bool,
    /// An expired code answers 42003 instead of 40029.
    pub strict_code_expiry: bool,
    /// An unknown access token answers 40014 instead of 40001.
    pub unknown_token_as_40014: bool,
    /// userinfo with a snapshot token answers 48001 instead of virtual data.
    pub snapshot_userinfo_denied: bool,
    /// The authorize page answers this error (10004 banned, 10006, 10009 ...).
    pub authorize_errcode: Option<u32>,
    /// The authorize page refuses browsers without `MicroMessenger` in the User-Agent with
    /// "请在微信客户端打开链接", as WeChat does (on by default; `--any-browser` turns it off).
    pub require_wechat_ua: bool,
    /// Before the browser gets its code, the mock itself loads the callback URL with that
    /// code, without cookies, with the visitor's User-Agent and `X-Requested-With` (the
    /// Tencent fetchers seen hitting callbacks: cnodejs 59c919abe7d9a031127eaf01,
    /// w7corp/easywechat#963). A gateway that exchanges the code then has burnt it.
    pub prefetch: bool,
    /// How the browser is brought back to the callback.
    pub double_load: DoubleLoad,
    /// How the JSON API writes non-ASCII characters.
    pub escapes: Escapes,
    /// The authorize page refuses a state with characters outside `[A-Za-z0-9]`.
    pub strict_state: bool,
    /// The account's IP whitelist (IP白名单): token and stable_token callers elsewhere get
    /// 40164. Loopback by default, so the gateway under test is allowed.
    pub ip_whitelist: Vec<String>,
    /// `expires_in` of basic access_tokens (WeChat: 7200).
    pub basic_token_ttl_secs: u64,
    /// `expires_in` of jsapi_tickets (WeChat: 7200).
    pub jsapi_ticket_ttl_secs: u64,
    /// Calls a day before 45009: `/cgi-bin/token` (WeChat: 2000).
    pub token_daily_quota: u64,
    /// `/cgi-bin/stable_token` (WeChat: 500000).
    pub stable_token_daily_quota: u64,
    /// `/cgi-bin/ticket/getticket`.
    pub ticket_daily_quota: u64,
    /// stable_token's `force_refresh: true` a day (WeChat: 20).
    pub force_refresh_daily_limit: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            fail_next: 0,
            fail_errcode: -1,
            http_error_next: 0,
            http_error_status: 503,
            garbage_next: 0,
            hang_next: 0,
            snapshot: false,
            deny: false,
            deny_redirect: false,
            content_type: ContentTypeVariant::default(),
            errmsg_style: ErrmsgStyle::default(),
            refresh_mode: RefreshMode::default(),
            refresh_resets_expiry: false,
            reused_code_as_invalid: false,
            strict_code_expiry: false,
            unknown_token_as_40014: false,
            snapshot_userinfo_denied: false,
            authorize_errcode: None,
            require_wechat_ua: true,
            prefetch: false,
            double_load: DoubleLoad::Off,
            escapes: Escapes::Raw,
            strict_state: false,
            ip_whitelist: vec!["127.0.0.1".into(), "::1".into()],
            basic_token_ttl_secs: 7200,
            jsapi_ticket_ttl_secs: 7200,
            token_daily_quota: 2000,
            stable_token_daily_quota: 500_000,
            ticket_daily_quota: 100_000,
            force_refresh_daily_limit: 20,
        }
    }
}

/// The fault one JSON API call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Hang,
    HttpStatus(u16),
    Garbage,
    Errcode(i64),
}

impl Faults {
    /// Takes the fault for one JSON API call, counting down the "next N" counters.
    pub fn take_api_fault(&mut self) -> Option<Injected> {
        if take_one(&mut self.hang_next) {
            Some(Injected::Hang)
        } else if take_one(&mut self.http_error_next) {
            Some(Injected::HttpStatus(self.http_error_status))
        } else if take_one(&mut self.garbage_next) {
            Some(Injected::Garbage)
        } else if take_one(&mut self.fail_next) {
            Some(Injected::Errcode(self.fail_errcode))
        } else {
            None
        }
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// Merges the keys of a JSON object into these switches; unknown keys are refused.
    pub fn merged(&self, patch: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(patch) = patch else {
            return Err("expected a JSON object".into());
        };
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(map) = &mut current {
            map.extend(patch);
        }
        let merged: Faults = serde_json::from_value(current).map_err(|e| e.to_string())?;
        if !(100..=599).contains(&merged.http_error_status) {
            return Err("http_error_status must be an HTTP status code".into());
        }
        Ok(merged)
    }
}

fn take_one(counter: &mut u32) -> bool {
    let had = *counter > 0;
    *counter = counter.saturating_sub(1);
    had
}

/// Calls per endpoint since start or the last reset.
#[derive(Debug, Default)]
pub struct Stats {
    pub authorize: AtomicU64,
    pub authorize_reply: AtomicU64,
    pub access_token: AtomicU64,
    pub refresh_token: AtomicU64,
    pub userinfo: AtomicU64,
    pub auth: AtomicU64,
    pub codes_issued: AtomicU64,
    pub codes_exchanged: AtomicU64,
    /// Cookie-less loads of a callback the mock made itself (`prefetch`).
    pub prefetches: AtomicU64,
    pub cgi_token: AtomicU64,
    pub stable_token: AtomicU64,
    pub getticket: AtomicU64,
    /// `wx.config` checks of the jweixin stand-in, by outcome.
    pub jssdk_config_ok: AtomicU64,
    pub jssdk_config_failed: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> serde_json::Value {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        serde_json::json!({
            "/connect/oauth2/authorize": get(&self.authorize),
            "/connect/oauth2/authorize_reply": get(&self.authorize_reply),
            "/sns/oauth2/access_token": get(&self.access_token),
            "/sns/oauth2/refresh_token": get(&self.refresh_token),
            "/sns/userinfo": get(&self.userinfo),
            "/sns/auth": get(&self.auth),
            "codes_issued": get(&self.codes_issued),
            "codes_exchanged": get(&self.codes_exchanged),
            "prefetches": get(&self.prefetches),
            "/cgi-bin/token": get(&self.cgi_token),
            "/cgi-bin/stable_token": get(&self.stable_token),
            "/cgi-bin/ticket/getticket": get(&self.getticket),
            "jssdk_config_ok": get(&self.jssdk_config_ok),
            "jssdk_config_failed": get(&self.jssdk_config_failed),
        })
    }

    pub fn reset(&self) {
        for counter in [
            &self.authorize,
            &self.authorize_reply,
            &self.access_token,
            &self.refresh_token,
            &self.userinfo,
            &self.auth,
            &self.codes_issued,
            &self.codes_exchanged,
            &self.prefetches,
            &self.cgi_token,
            &self.stable_token,
            &self.getticket,
            &self.jssdk_config_ok,
            &self.jssdk_config_failed,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_counters_run_out_in_priority_order() {
        let mut faults = Faults {
            fail_next: 1,
            http_error_next: 1,
            ..Faults::default()
        };
        assert_eq!(faults.take_api_fault(), Some(Injected::HttpStatus(503)));
        assert_eq!(faults.take_api_fault(), Some(Injected::Errcode(-1)));
        assert_eq!(faults.take_api_fault(), None);
    }

    #[test]
    fn merge_keeps_unmentioned_switches_and_refuses_typos() {
        let faults = Faults {
            snapshot: true,
            ..Faults::default()
        };
        let merged = faults
            .merged(serde_json::json!({"fail_next": 2, "content_type": "json-encoding"}))
            .unwrap();
        assert!(merged.snapshot);
        assert_eq!(merged.fail_next, 2);
        assert_eq!(merged.content_type, ContentTypeVariant::JsonEncoding);
        assert!(faults.merged(serde_json::json!({"fail_nxt": 1})).is_err());
        assert!(faults.merged(serde_json::json!([1])).is_err());
        assert!(
            faults
                .merged(serde_json::json!({"http_error_status": 42}))
                .is_err()
        );
    }
}
