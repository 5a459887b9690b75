//! A stand-in for WeChat's `jweixin-1.6.0.js`, served where res.wx.qq.com serves it
//! (`/open/js/jweixin-1.6.0.js`). Its `wx.config` really checks the page's signature: it
//! sends the fields with the URL the browser is on (fragment removed) to this mock, which
//! recomputes `sha1("jsapi_ticket=…&noncestr=…&timestamp=…&url=…")` over every ticket it has
//! issued and still honours. Like WeChat's client it does nothing outside WeChat (no
//! `WeixinJSBridge`), calls `wx.error` then still `wx.ready` when the check fails, and lets
//! only the configured JS-APIs succeed, only after a successful config.

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::api::Params;
use super::faults::Stats;
use super::wire::{self, Body};
use super::{Shared, lock};

pub const SCRIPT_PATH: &str = "/open/js/jweixin-1.6.0.js";
pub const VERIFY_PATH: &str = "/_mock/jssdk/config";

const SCRIPT: &str = r##"(function (w) {
  "use strict";
  var me = document.currentScript;
  var mock = me ? me.src.replace(/\/open\/js\/[^\/]*$/, "") : "";
  var state = null, readies = [], errors = [], allowed = {};
  var calls = [];
  function later(fn, arg) { setTimeout(function () { fn(arg); }, 0); }
  // `wxgate demo` simulates WeChat server-side for desktop browsers and says so here.
  function inWeChat() { return /MicroMessenger/i.test(w.navigator.userAgent) || w.__wxgateSimulatedWeChat === true; }
  function enc(v) { return encodeURIComponent(v == null ? "" : String(v)); }
  function settle(result) {
    state = result;
    if (result.errMsg !== "config:ok") {
      for (var i = 0; i < errors.length; i++) { later(errors[i], result); }
    }
    // WeChat runs ready after the check whatever its outcome.
    for (var j = 0; j < readies.length; j++) { later(readies[j]); }
  }
  function api(name) {
    return function (o) {
      o = o || {};
      var ok = state && state.errMsg === "config:ok" && allowed[name];
      var res = { errMsg: name + (ok ? ":ok" : ":permission denied") };
      calls.push({ name: name, ok: !!ok, args: o });
      later(function () { if (ok) { o.success && o.success(res); } else { o.fail && o.fail(res); } o.complete && o.complete(res); });
    };
  }
  var wx = {
    config: function (c) {
      if (!inWeChat()) { return; }
      c = c || {};
      var list = c.jsApiList || [];
      for (var i = 0; i < list.length; i++) { allowed[list[i]] = true; }
      var url = w.location.href.split("#")[0];
      var q = "appId=" + enc(c.appId) + "&timestamp=" + enc(c.timestamp) + "&nonceStr=" + enc(c.nonceStr) +
        "&signature=" + enc(c.signature) + "&url=" + enc(url) + "&jsApiList=" + enc(list.join(","));
      var x = new XMLHttpRequest();
      x.open("GET", mock + "/_mock/jssdk/config?" + q, true);
      x.onreadystatechange = function () {
        if (x.readyState !== 4) { return; }
        var res;
        try { res = JSON.parse(x.responseText); } catch (e) { res = { errMsg: "config:fail" }; }
        if (c.debug) { w.console && w.console.log("wx.config", res); }
        settle(res);
      };
      x.send();
    },
    ready: function (fn) { if (state) { later(fn); } else { readies.push(fn); } },
    error: function (fn) { if (state && state.errMsg !== "config:ok") { later(fn, state); } else if (!state) { errors.push(fn); } },
    checkJsApi: function (o) {
      o = o || {};
      var r = {};
      (o.jsApiList || []).forEach(function (n) { r[n] = !!wx[n]; });
      later(function () { o.success && o.success({ checkResult: r, errMsg: "checkJsApi:ok" }); });
    }
  };
  ["updateAppMessageShareData", "updateTimelineShareData", "onMenuShareAppMessage", "onMenuShareTimeline",
   "chooseImage", "previewImage", "getLocation", "scanQRCode", "closeWindow", "hideMenuItems", "showMenuItems"
  ].forEach(function (n) { wx[n] = api(n); });
  w.wx = w.jWeixin = wx;
  w.__mockWx = { calls: calls, state: function () { return state; } };
})(window);
"##;

pub fn script() -> Response<Body> {
    let mut response = wire::respond(
        StatusCode::OK,
        "application/javascript; charset=utf-8",
        bytes::Bytes::from_static(SCRIPT.as_bytes()),
    );
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("max-age=600"));
    response
}

/// The stand-in's `wx.config` check: `{"errMsg":"config:ok"}` or WeChat's failure text.
pub fn verify(shared: &Shared, query: &str, _headers: &HeaderMap) -> Response<Body> {
    let params = Params::parse(query);
    let outcome = check(shared, &params);
    let counter = if outcome == "config:ok" {
        &shared.stats.jssdk_config_ok
    } else {
        &shared.stats.jssdk_config_failed
    };
    Stats::bump(counter);
    let mut response = wire::json(StatusCode::OK, &serde_json::json!({ "errMsg": outcome }));
    // The page is on the gateway's origin, this check on the mock's.
    response
        .headers_mut()
        .insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

fn check(shared: &Shared, params: &Params) -> &'static str {
    let config = &shared.config;
    if params.get("appId") != Some(config.appid.as_str()) {
        return "config:invalid appId";
    }
    let (Some(timestamp), Some(nonce), Some(signature), Some(url)) = (
        params.get("timestamp"),
        params.get("nonceStr"),
        params.get("signature"),
        params.get("url"),
    ) else {
        return "config:invalid signature";
    };
    if !js_safe_domain(shared, url) {
        return "config:invalid url domain";
    }
    let now = shared.clock.now();
    let tickets = lock(&shared.basic).live_tickets(now);
    let matches = tickets.iter().any(|ticket| {
        let plain =
            format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
        hex::encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, plain.as_bytes())) == signature
    });
    if matches {
        "config:ok"
    } else {
        "config:invalid signature"
    }
}

/// JS接口安全域名: the configured domains (exact host), and loopback while the mock accepts it.
fn js_safe_domain(shared: &Shared, url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let config = &shared.config;
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    config.accept_any_redirect
        || (loopback && config.loopback_any_port)
        || config
            .authorized_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(host))
}
