//! The demo upstream's one page: what the application behind the gateway received — the
//! verified identity claims, the plain `X-WeChat-*` headers, the avatar and nickname, every
//! other header — with links to try each kind of route. Chinese and English, mobile first,
//! no script; everything printed is escaped.

use crate::config::Scope;
use crate::identity::Claims;
use crate::pages::escape;

/// One route of the demo, shown on the page and configured on the gateway.
#[derive(Debug, Clone, Copy)]
pub struct DemoRoute {
    pub path: &'static str,
    pub scope: Scope,
    pub title_zh: &'static str,
    pub title_en: &'static str,
}

/// The demo's routes, the most specific last; `/` is the page the demo prints.
pub const ROUTES: [DemoRoute; 3] = [
    DemoRoute {
        path: "/",
        scope: Scope::SnsapiUserinfo,
        title_zh: "需要昵称头像的页面",
        title_en: "A page that needs the profile",
    },
    DemoRoute {
        path: "/base/",
        scope: Scope::SnsapiBase,
        title_zh: "只需 openid 的页面（静默授权）",
        title_en: "A page that needs only the openid (silent)",
    },
    DemoRoute {
        path: "/public/",
        scope: Scope::Public,
        title_zh: "公开页面",
        title_en: "A public page",
    },
];

/// The demo route a path falls under (longest prefix, as the gateway matches).
pub fn route_of(path: &str) -> &'static DemoRoute {
    ROUTES
        .iter()
        .filter(|route| path.starts_with(route.path))
        .max_by_key(|route| route.path.len())
        .unwrap_or(&ROUTES[0])
}

pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Public => "public",
        Scope::SnsapiBase => "snsapi_base",
        Scope::SnsapiUserinfo => "snsapi_userinfo",
    }
}

/// What became of the identity header.
pub enum Identity {
    /// No identity header arrived (a public route).
    Absent,
    /// The signature, issuer, audience and expiry all check out.
    Verified {
        claims: Box<Claims>,
        algorithm: String,
        kid: String,
        /// Where the key came from: the JWKS URL or "the shared HS256 secret".
        against: String,
        token_bytes: usize,
    },
    /// The header arrived but did not verify; `reason` never holds the token.
    Rejected { reason: String, against: String },
}

/// Everything the page shows; built by the upstream from the request it received.
pub struct Received {
    /// Path and query exactly as the upstream received them.
    pub target: String,
    pub route: &'static DemoRoute,
    pub identity: Identity,
    /// `X-WeChat-OpenID` and the other plain headers: name, raw value, decoded value.
    pub plain: Vec<(String, String, Option<String>)>,
    /// Every header, the secret-bearing ones masked.
    pub headers: Vec<(String, String)>,
    /// The demo appended its WeChat marker to the browser's User-Agent.
    pub simulated_wechat: bool,
    /// Where WeChat's jweixin script comes from (the mock's stand-in in the demo).
    pub jweixin_origin: String,
}

const STYLE: &str = "*{box-sizing:border-box}body{margin:0;font-family:-apple-system,BlinkMacSystemFont,'PingFang SC',\
'Noto Sans CJK SC','Microsoft YaHei',sans-serif;background:#ededed;color:#191919;-webkit-text-size-adjust:100%}\
main{max-width:560px;margin:0 auto;padding:16px 12px 40px}h1{font-size:19px;margin:4px 0 2px}\
.en{color:#7f7f7f;font-size:13px;font-weight:400}section{background:#fff;border-radius:10px;padding:14px;margin:12px 0}\
h2{font-size:15px;margin:0 0 8px}.who{display:flex;align-items:center;gap:14px}\
.avatar{width:64px;height:64px;border-radius:8px;background:#d8d8d8;flex:none}\
.nickname{font-size:22px;font-weight:600;word-break:break-all}.openid{font:12px monospace;color:#7f7f7f;word-break:break-all}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#07c160;color:#fff;font-size:12px}\
.badge.public{background:#888}.badge.base{background:#10aeff}\
.ok{border-left:4px solid #07c160}.bad{border-left:4px solid #e64340}.muted{color:#7f7f7f;font-size:13px}\
pre{margin:0;padding:10px;background:#f7f7f7;border-radius:6px;overflow-x:auto;font-size:12px;line-height:1.5;white-space:pre-wrap;word-break:break-all}\
table{width:100%;border-collapse:collapse;font-size:12px}td{padding:4px 6px;border-top:1px solid #eee;vertical-align:top;word-break:break-all}\
td:first-child{font-family:monospace;white-space:nowrap;color:#576b95;width:1%}\
nav a{display:block;padding:10px 0;border-top:1px solid #eee;color:#576b95;text-decoration:none;font-size:15px}\
nav a:first-of-type{border-top:0}nav code{font-size:12px;color:#7f7f7f}p{font-size:14px;line-height:1.6;margin:6px 0}";

/// The whole page.
pub fn render(received: &Received) -> String {
    let route = received.route;
    let body = [
        header(route),
        who(received),
        verification(&received.identity),
        share_card(&received.jweixin_origin, received.simulated_wechat),
        links(),
        claims(&received.identity),
        plain_headers(&received.plain),
        all_headers(received),
    ]
    .concat();
    format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<link rel=\"icon\" href=\"data:,\"><title>wxgate 演示 · demo</title><style>{STYLE}</style></head>\
<body><main>{body}</main></body></html>"
    )
}

fn header(route: &DemoRoute) -> String {
    let class = match route.scope {
        Scope::Public => "badge public",
        Scope::SnsapiBase => "badge base",
        Scope::SnsapiUserinfo => "badge",
    };
    format!(
        "<h1>wxgate 演示：上游应用收到了什么 <span class=\"en\">what the upstream app received</span></h1>\
<p>{zh} <span class=\"en\">{en}</span> · <code>{path}</code> <span class=\"{class}\">{scope}</span></p>",
        zh = escape(route.title_zh),
        en = escape(route.title_en),
        path = escape(route.path),
        scope = scope_name(route.scope),
    )
}

/// Which of WeChat's webviews the demo dressed the browser as, and the switch to the other.
fn simulated_webview(received: &Received) -> &'static str {
    let android = received
        .headers
        .iter()
        .any(|(name, value)| name == "x-requested-with" && value == "com.tencent.mm");
    match (received.simulated_wechat, android) {
        (false, _) => "",
        (true, true) => {
            "<p class=\"muted webview\">演示把你的浏览器模拟成了安卓微信：User-Agent 末尾加了 \
             <code>MicroMessenger/8.0.50</code>，每个请求都带 <code>X-Requested-With: com.tencent.mm</code>。\
             <a href=\"/_demo/view?as=ios\">改为 iOS 微信</a>\
             <span class=\"en\">The demo made your browser look like Android WeChat: \
             <code>MicroMessenger/8.0.50</code> appended to the User-Agent, and \
             <code>X-Requested-With: com.tencent.mm</code> on every request, as its WebView sends. \
             <a href=\"/_demo/view?as=ios\">Switch to iOS</a></span></p>"
        }
        (true, false) => {
            "<p class=\"muted webview\">演示把你的浏览器模拟成了 iOS 微信：User-Agent 末尾加了 \
             <code>MicroMessenger/8.0.50</code>。<a href=\"/_demo/view?as=android\">改为安卓微信</a>\
             <span class=\"en\">The demo made your browser look like iOS WeChat: \
             <code>MicroMessenger/8.0.50</code> appended to the User-Agent. \
             <a href=\"/_demo/view?as=android\">Switch to Android</a></span></p>"
        }
    }
}

fn who(received: &Received) -> String {
    let Identity::Verified { claims, .. } = &received.identity else {
        let text = match received.identity {
            Identity::Absent => {
                "公开路由：网关不要求登录，也不向上游转发身份。<span class=\"en\">Public route: \
                 no login is required and no identity is forwarded.</span>"
            }
            _ => "身份未通过验证。<span class=\"en\">The identity did not verify.</span>",
        };
        return format!(
            "<section><h2>访客 <span class=\"en\">Visitor</span></h2><p>{text}</p></section>"
        );
    };
    let avatar = claims
        .headimgurl
        .as_deref()
        .filter(|url| url.starts_with("http://") || url.starts_with("https://"))
        .map(|url| {
            format!(
                "<img class=\"avatar\" alt=\"\" referrerpolicy=\"no-referrer\" src=\"{}\">",
                escape(url)
            )
        })
        .unwrap_or_else(|| "<div class=\"avatar\"></div>".to_owned());
    let name = match claims.nickname.as_deref() {
        Some(nickname) => format!(
            "<div class=\"nickname\">{}</div>",
            escape(&printable(nickname))
        ),
        None => "<div class=\"muted\">snsapi_base：没有昵称和头像，只有 openid \
                 <span class=\"en\">no nickname or avatar, only the openid</span></div>"
            .to_owned(),
    };
    let snapshot = if claims.snapshot == Some(true) {
        "<p class=\"muted\">快照页虚拟账号 <span class=\"en\">a snapshot-page virtual account</span></p>"
    } else {
        ""
    };
    let marker = simulated_webview(received);
    format!(
        "<section><div class=\"who\">{avatar}<div>{name}<div class=\"openid\">openid {openid}</div>\
<div class=\"openid\">unionid {unionid}</div></div></div>{snapshot}{marker}</section>",
        openid = escape(&claims.openid),
        unionid = escape(claims.unionid.as_deref().unwrap_or("—")),
    )
}

fn verification(identity: &Identity) -> String {
    match identity {
        Identity::Absent => String::new(),
        Identity::Verified {
            algorithm,
            kid,
            against,
            token_bytes,
            claims,
        } => format!(
            "<section class=\"ok verified\"><h2>✓ 签名已验证 <span class=\"en\">Signature verified</span></h2>\
<p>{algorithm}, kid <code>{kid}</code>, 密钥来自 <span class=\"en\">key from</span> <code>{against}</code></p>\
<p class=\"muted\">iss <code>{iss}</code> · aud <code>{aud}</code> · exp {exp} · \
JWT {token_bytes} bytes, 不在页面上显示：它是访问上游的凭证 \
<span class=\"en\">not shown: it is a credential for the upstream</span></p></section>",
            algorithm = escape(algorithm),
            kid = escape(kid),
            against = escape(against),
            iss = escape(&claims.iss),
            aud = escape(&claims.aud),
            exp = claims.exp,
        ),
        Identity::Rejected { reason, against } => format!(
            "<section class=\"bad\"><h2>✗ 签名验证失败 <span class=\"en\">Signature not verified</span></h2>\
<p>{} <span class=\"muted\">({})</span></p></section>",
            escape(reason),
            escape(against)
        ),
    }
}

fn claims(identity: &Identity) -> String {
    let Identity::Verified { claims, .. } = identity else {
        return String::new();
    };
    // serde_json writes control characters as \u escapes, so the nickname's bytes stay visible.
    let json = serde_json::to_string_pretty(claims).unwrap_or_default();
    format!(
        "<section><h2>JWT 声明 <span class=\"en\">JWT claims</span></h2><pre class=\"claims\">{}</pre></section>",
        escape(&json)
    )
}

fn plain_headers(plain: &[(String, String, Option<String>)]) -> String {
    if plain.is_empty() {
        return String::new();
    }
    let rows: String = plain
        .iter()
        .map(|(name, raw, decoded)| {
            let decoded = decoded
                .as_deref()
                .filter(|d| d != raw)
                .map(|d| format!("<br>→ {}", escape(&printable(d))))
                .unwrap_or_default();
            format!(
                "<tr><td>{}</td><td>{}{decoded}</td></tr>",
                escape(name),
                escape(raw)
            )
        })
        .collect();
    format!(
        "<section><h2>明文身份头 <span class=\"en\">Plain identity headers</span></h2>\
<p class=\"muted\">昵称按 UTF-8 百分号编码 <span class=\"en\">the nickname is percent-encoded UTF-8</span></p>\
<table>{rows}</table></section>"
    )
}

fn all_headers(received: &Received) -> String {
    let rows: String = received
        .headers
        .iter()
        .map(|(name, value)| {
            format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(&printable(value))
            )
        })
        .collect();
    format!(
        "<section><h2>上游收到的请求 <span class=\"en\">The request the upstream received</span></h2>\
<p><code>GET {}</code></p><table>{rows}</table></section>",
        escape(&received.target)
    )
}

/// The JS-SDK at work: the page includes WeChat's jweixin and the gateway's helper, which
/// has `/_wxgate/jssdk` sign this exact URL; WeChat's check decides, the page says what it said.
fn share_card(jweixin_origin: &str, simulated_wechat: bool) -> String {
    let simulated = if simulated_wechat {
        "<script data-demo=\"simulated-wechat\">window.__wxgateSimulatedWeChat=true;</script>"
    } else {
        ""
    };
    format!(
        "<section class=\"jssdk\"><h2>分享卡片 <span class=\"en\">Share card (JS-SDK)</span></h2>\
<p class=\"jssdk-status\">正在配置 wx.config… <span class=\"en\">configuring…</span></p>\
<p><code>/_wxgate/jssdk.js</code> 让网关为本页签名（<code>/_wxgate/jssdk?url=</code>），微信校验签名。\
<span class=\"en\">The gateway signs this exact page; WeChat checks the signature.</span></p></section>\
{simulated}<script src=\"{jweixin}/open/js/jweixin-1.6.0.js\"></script>\
<script src=\"/_wxgate/jssdk.js\" data-apis=\"updateAppMessageShareData updateTimelineShareData\"></script>\
<script data-demo=\"share-card\">{SHARE_SCRIPT}</script>",
        jweixin = escape(jweixin_origin),
    )
}

const SHARE_SCRIPT: &str = "(function(){var s=document.querySelector('.jssdk-status'),box=document.querySelector('.jssdk');\
function say(ok,zh,en){s.innerHTML='';s.appendChild(document.createTextNode(zh+' '));var e=document.createElement('span');\
e.className='en';e.textContent=en;s.appendChild(e);box.className='jssdk '+(ok?'ok':'bad');}\
if(!/MicroMessenger/i.test(navigator.userAgent)&&window.__wxgateSimulatedWeChat!==true){say(false,'仅在微信内可用','Only inside WeChat: wx.config does nothing elsewhere');return;}\
wxgateJssdk.ready(function(){var link=location.href.split('#')[0];wx.updateAppMessageShareData({title:'wxgate 演示',\
desc:'一个网关，登录与分享卡片',link:link,imgUrl:location.origin+'/favicon.ico',success:function(){\
say(true,'✓ 分享卡片已配置，微信已验证签名','Share card configured: WeChat verified the signature');},\
fail:function(r){say(false,'✗ 分享卡片未配置: '+r.errMsg,'Share card not configured');}});})\
.error(function(r){say(false,'✗ 签名未通过: '+r.errMsg,'Signature not verified');});})();";

fn links() -> String {
    let routes: String = ROUTES
        .iter()
        .map(|route| {
            let href = if route.path == "/" {
                "/?from=singlemessage&isappinstalled=0"
            } else {
                route.path
            };
            format!(
                "<a href=\"{}\">{} <span class=\"en\">{}</span> <code>{}</code></a>",
                escape(href),
                escape(route.title_zh),
                escape(route.title_en),
                scope_name(route.scope)
            )
        })
        .collect();
    format!(
        "<section><nav>{routes}\
<a class=\"logout\" href=\"/_wxgate/logout?rd=/\">退出登录 <span class=\"en\">Log out</span> <code>/_wxgate/logout?rd=/</code></a>\
<a href=\"/_wxgate/me\">访客信息 JSON <span class=\"en\">the visitor as JSON</span> <code>/_wxgate/me</code></a>\
<a href=\"/_wxgate/jwks.json\">验签公钥 <span class=\"en\">verification keys</span> <code>/_wxgate/jwks.json</code></a>\
<a class=\"desktop\" href=\"/_demo/view?as=desktop\">以桌面浏览器查看（会先退出登录）<span class=\"en\">See it as a desktop browser (logs you out)</span></a>\
<a href=\"/_demo/view?as=wechat\">恢复模拟微信 <span class=\"en\">Back to the simulated WeChat</span></a>\
</nav></section>"
    )
}

/// Control characters mean nothing on screen; show them as `\u{7}` so nothing is hidden.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityFacts;
    use std::time::{Duration, SystemTime};

    fn claims(nickname: &str, headimgurl: &str) -> Claims {
        Claims::new(
            IdentityFacts {
                appid: "wx1".into(),
                scope: "snsapi_userinfo".into(),
                openid: "o<openid>".into(),
                nickname: Some(nickname.into()),
                headimgurl: Some(headimgurl.into()),
                ..IdentityFacts::default()
            },
            "wxgate",
            "wxgate-upstream",
            Duration::from_secs(300),
            SystemTime::now(),
        )
    }

    fn received(identity: Identity) -> Received {
        Received {
            target: "/?q=<b>".into(),
            route: route_of("/"),
            identity,
            plain: vec![(
                "x-wechat-nickname".into(),
                "%3Cb%3E".into(),
                Some("<b>\u{7}".into()),
            )],
            headers: vec![("user-agent".into(), "<script>".into())],
            simulated_wechat: true,
            jweixin_origin: "http://127.0.0.1:9100".into(),
        }
    }

    #[test]
    fn the_page_says_which_webview_the_browser_was_dressed_as() {
        let mut android = received(Identity::Absent);
        android
            .headers
            .push(("x-requested-with".into(), "com.tencent.mm".into()));
        let shown = simulated_webview(&android);
        assert!(
            shown.contains("Android WeChat") && shown.contains("as=ios"),
            "{shown}"
        );
        let ios = simulated_webview(&received(Identity::Absent));
        assert!(
            ios.contains("iOS WeChat") && ios.contains("as=android"),
            "{ios}"
        );
        let mut real = received(Identity::Absent);
        real.simulated_wechat = false;
        assert_eq!(simulated_webview(&real), "");
    }

    #[test]
    fn routes_match_by_longest_prefix() {
        assert_eq!(route_of("/").scope, Scope::SnsapiUserinfo);
        assert_eq!(route_of("/base/x?y").scope, Scope::SnsapiBase);
        assert_eq!(route_of("/public/").scope, Scope::Public);
        assert_eq!(route_of("/other").scope, Scope::SnsapiUserinfo);
    }

    #[test]
    fn everything_printed_is_escaped_and_control_bytes_are_shown() {
        let identity = Identity::Verified {
            claims: Box::new(claims("阿\u{7}铃<i>😀", "javascript:alert(1)")),
            algorithm: "ES256".into(),
            kid: "k\"1".into(),
            against: "http://127.0.0.1/_wxgate/jwks.json".into(),
            token_bytes: 600,
        };
        let html = render(&received(identity));
        for raw in ["<i>", "<b>", "<script>", "k\"1", "\u{7}"] {
            assert!(!html.contains(raw), "{raw:?} printed raw");
        }
        assert!(
            !html.contains("src=\"javascript:"),
            "only http(s) avatars load"
        );
        assert!(
            html.contains("<div class=\"nickname\">阿\\u{7}铃&lt;i&gt;😀</div>"),
            "{html}"
        );
        assert!(
            html.contains("\\u0007"),
            "claims JSON keeps the escape: {html}"
        );
        assert!(html.contains("Signature verified"));
        assert!(html.contains("href=\"/_wxgate/logout?rd=/\""));
    }

    #[test]
    fn a_rejected_or_absent_identity_says_so() {
        let html = render(&received(Identity::Rejected {
            reason: "token has expired".into(),
            against: "jwks".into(),
        }));
        assert!(html.contains("Signature not verified") && html.contains("token has expired"));
        assert!(!html.contains("Signature verified"));
        let html = render(&received(Identity::Absent));
        assert!(html.contains("no identity is forwarded"));
    }
}
