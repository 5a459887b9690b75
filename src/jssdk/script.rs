//! `/_wxgate/jssdk.js`: the one line a page adds after WeChat's `jweixin` script. It asks
//! `/_wxgate/jssdk` to sign the page as the browser has it and calls `wx.config` with the
//! JS-API list of its own attributes:
//!
//! ```html
//! <script src="https://res.wx.qq.com/open/js/jweixin-1.6.0.js"></script>
//! <script src="/_wxgate/jssdk.js" data-apis="updateAppMessageShareData updateTimelineShareData"></script>
//! ```
//!
//! `data-open-tags` (e.g. `wx-open-launch-weapp`), `data-app` (an `[[apps]]` name) and
//! `data-debug` are optional. `wxgateJssdk.ready(fn)` / `.error(fn)` run after `wx.ready` /
//! on any failure (no `wx`, the gateway refused, `wx.error`); `wxgateJssdk.configure()` signs
//! again after a single-page app changed its URL.

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Response, StatusCode};

use crate::body::Body;
use crate::pages;

/// XMLHttpRequest and ES5 only: WeChat's older Android webviews (X5) lack fetch and arrows.
const SCRIPT: &str = r##"(function (w, d) {
  "use strict";
  var me = d.currentScript || (function () { var s = d.getElementsByTagName("script"); return s[s.length - 1]; })();
  var list = function (name) { return (me.getAttribute(name) || "").split(/[\s,]+/).filter(function (x) { return x; }); };
  var apis = list("data-apis");
  if (!apis.length) { apis = ["updateAppMessageShareData", "updateTimelineShareData"]; }
  var tags = list("data-open-tags");
  var app = me.getAttribute("data-app");
  var debug = me.hasAttribute("data-debug");
  var endpoint = me.src.replace(/jssdk\.js(\?.*)?$/, "jssdk");
  var state = { done: false, ok: false, detail: null }, readies = [], errors = [];
  function settle(ok, detail) {
    if (state.done) { return; }
    state.done = true; state.ok = ok; state.detail = detail;
    var fns = ok ? readies : errors;
    for (var i = 0; i < fns.length; i++) { try { fns[i](detail); } catch (e) { setTimeout(function () { throw e; }); } }
  }
  function configure() {
    state.done = false;
    if (!w.wx || typeof w.wx.config !== "function") {
      settle(false, { errMsg: "wxgate: load WeChat's jweixin script before /_wxgate/jssdk.js" });
      return;
    }
    var page = w.location.href.split("#")[0];
    var q = "?url=" + encodeURIComponent(page) + (app ? "&app=" + encodeURIComponent(app) : "");
    var x = new XMLHttpRequest();
    x.open("GET", endpoint + q, true);
    x.setRequestHeader("Accept", "application/json");
    x.onreadystatechange = function () {
      if (x.readyState !== 4) { return; }
      var body = null;
      try { body = JSON.parse(x.responseText); } catch (e) { body = null; }
      if (x.status !== 200 || !body || !body.signature) {
        settle(false, { errMsg: "wxgate: " + ((body && (body.message || body.error)) || ("HTTP " + x.status)), status: x.status, body: body });
        return;
      }
      w.wx.ready(function () { settle(true, { errMsg: "config:ok" }); });
      w.wx.error(function (res) { settle(false, res); });
      w.wx.config({ debug: debug, appId: body.appId, timestamp: body.timestamp, nonceStr: body.nonceStr,
        signature: body.signature, jsApiList: apis, openTagList: tags });
    };
    x.send();
  }
  w.wxgateJssdk = {
    ready: function (fn) { if (state.done && state.ok) { fn(state.detail); } else { readies.push(fn); } return this; },
    error: function (fn) { if (state.done && !state.ok) { fn(state.detail); } else { errors.push(fn); } return this; },
    configure: configure,
    state: state
  };
  configure();
})(window, document);
"##;

pub fn response() -> Response<Body> {
    let mut response = pages::build(
        StatusCode::OK,
        "application/javascript; charset=utf-8",
        Bytes::from_static(SCRIPT.as_bytes()),
    );
    // The script is the same for every page; a short cache spares a request per page view.
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
