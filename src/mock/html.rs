//! The HTML the mock shows a browser: WeChat's WeUI error pages, a consent sheet that looks
//! like WeChat's snsapi_userinfo popup (with a user picker for people testing by hand),
//! the "you refused" page, a generated avatar and an index of the mock's endpoints.

use super::users::{FixtureUser, MockUser, USERS};

const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font-family:-apple-system,BlinkMacSystemFont,"PingFang SC","Helvetica Neue","Microsoft YaHei",sans-serif;background:#ededed;color:#191919;-webkit-text-size-adjust:100%}
.weui_msg{padding-top:36px;text-align:center}.weui_icon_area{margin-bottom:30px}
.weui_icon_msg{display:inline-block;width:93px;height:93px;border-radius:50%;background:#10aeff;color:#fff;font:bold 60px/93px serif;font-style:normal}
.weui_icon_msg:before{content:"i"}.weui_text_area{padding:0 20px}
.weui_msg_title{margin:0 0 5px;font-weight:400;font-size:20px;line-height:1.4}
.weui_msg_desc{font-size:14px;color:#888}
.sheet{position:fixed;left:0;right:0;bottom:0;background:#fff;border-radius:12px 12px 0 0;padding:24px 24px 32px}
.app{display:flex;align-items:center;font-size:15px;margin-bottom:20px}
.app_logo{width:24px;height:24px;border-radius:50%;background:#07c160;color:#fff;font-size:13px;line-height:24px;text-align:center;margin-right:8px}
.title{font-size:17px;font-weight:600;margin:0 0 8px}.desc{font-size:14px;color:#888;margin:0 0 20px}
.profile{display:flex;align-items:center;padding:14px 0;border-top:1px solid #eee;border-bottom:1px solid #eee;margin-bottom:28px}
.avatar{width:48px;height:48px;border-radius:6px;margin-right:12px}.nick{font-size:16px}.hint{font-size:13px;color:#888;margin-top:4px}
.btns{display:flex;justify-content:center;gap:16px}
.weui-btn{display:block;width:120px;padding:10px 0;border-radius:8px;font-size:17px;font-weight:600;text-align:center;text-decoration:none}
.weui-btn_primary{background:#07c160;color:#fff}.weui-btn_default{background:#f2f2f2;color:#06ae56}
.picker{position:fixed;top:8px;left:8px;right:8px;font-size:13px;color:#576b95}
.picker ul{list-style:none;margin:6px 0;padding:8px;background:#fff;border-radius:8px}.picker li{padding:4px 0}
.picker a{color:#576b95}.picker .current{font-weight:600}
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1,maximum-scale=1,user-scalable=no\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        escape(title)
    )
}

/// WeChat's authorize error page: `<msg>，错误码:<code>` in `weui_msg_title`.
pub fn error_page(message: &str, errcode: Option<u32>) -> String {
    let title = match errcode {
        Some(code) => format!("{message}，错误码:{code}"),
        None => message.to_owned(),
    };
    let body = format!(
        "<div class=\"weui_msg\"><div class=\"weui_icon_area\"><i class=\"weui_icon_info weui_icon_msg\"></i></div>\
         <div class=\"weui_text_area\"><h4 class=\"weui_msg_title\">{}</h4></div></div>",
        escape(&title)
    );
    page("微信网页授权", &body)
}

/// What stays on screen after 拒绝: WeChat does not go back to the site.
pub fn denied_page() -> String {
    let body = "<div class=\"weui_msg\"><div class=\"weui_icon_area\"><i class=\"weui_icon_info weui_icon_msg\"></i></div>\
         <div class=\"weui_text_area\"><h4 class=\"weui_msg_title\">你已拒绝授权</h4>\
         <p class=\"weui_msg_desc\">该网页将无法获取你的昵称、头像</p></div></div>";
    page("微信网页授权", body)
}

/// The way back to the callback when the webview loads it twice: a background request
/// (`fetch` with the page's cookies, `keepalive` so leaving the page does not cancel it)
/// loads it, and the page itself goes there at the same moment (`concurrent`) or once that
/// request is answered. A browser without JavaScript follows the `<noscript>` refresh: one load.
pub fn double_load_page(location: &str, concurrent: bool) -> String {
    // The URL as a JS string that cannot close the script element.
    let target = serde_json::to_string(location)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c");
    let loads = if concurrent {
        "first; go();"
    } else {
        "first.then(go, go);"
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <noscript><meta http-equiv=\"refresh\" content=\"0;url={}\"></noscript>\
         <title>微信网页授权</title></head><body>\
         <script>var target = {target};\
         function go() {{ location.replace(target); }}\
         var first = fetch(target, {{ credentials: \"include\", mode: \"no-cors\", keepalive: true }});\
         {loads}</script></body></html>\n",
        escape(location)
    )
}

/// One entry of the user picker on the consent page.
pub struct PickerEntry {
    pub user: &'static FixtureUser,
    pub href: String,
    pub current: bool,
}

/// The consent sheet of a snsapi_userinfo authorization.
pub fn consent_page(
    app_name: &str,
    user: &MockUser,
    allow_href: &str,
    deny_href: &str,
    picker: &[PickerEntry],
) -> String {
    let entries: String = picker
        .iter()
        .map(|entry| {
            let class = if entry.current {
                " class=\"current\""
            } else {
                ""
            };
            format!(
                "<li><a{class} href=\"{}\">{}</a> · {}</li>",
                escape(&entry.href),
                escape(&display_name(entry.user.nickname)),
                escape(entry.user.note)
            )
        })
        .collect();
    let body = format!(
        "<details class=\"picker\"><summary>模拟器：切换用户</summary><ul>{entries}</ul></details>\
         <div class=\"sheet\">\
         <div class=\"app\"><span class=\"app_logo\">公</span><span class=\"app_name\">{app}</span></div>\
         <h3 class=\"title\">{app} 申请获取以下权限</h3>\
         <p class=\"desc\">获得你的公开信息（昵称、头像等）</p>\
         <div class=\"profile\"><img class=\"avatar\" alt=\"\" src=\"/_mock/avatar?user={id}\">\
         <div><div class=\"nick\">{nick}</div><div class=\"hint\">微信个人信息</div></div></div>\
         <div class=\"btns\"><a class=\"weui-btn weui-btn_default\" href=\"{deny}\">拒绝</a>\
         <a class=\"weui-btn weui-btn_primary\" href=\"{allow}\">允许</a></div></div>",
        app = escape(app_name),
        id = escape(user.id()),
        nick = escape(&display_name(user.nickname())),
        deny = escape(deny_href),
        allow = escape(allow_href),
    );
    page("微信授权", &body)
}

/// A square avatar: the user's colour and the first printable character of the nickname.
pub fn avatar_svg(user: &MockUser) -> String {
    let initial: String = display_name(user.nickname()).chars().take(1).collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"132\" height=\"132\" viewBox=\"0 0 132 132\">\
         <rect width=\"132\" height=\"132\" fill=\"{}\"/>\
         <text x=\"66\" y=\"86\" font-size=\"60\" text-anchor=\"middle\" fill=\"#fff\" font-family=\"sans-serif\">{}</text></svg>",
        user.color(),
        escape(&initial)
    )
}

pub fn index_page(appid: &str) -> String {
    let users: String = USERS
        .iter()
        .map(|user| {
            format!(
                "<li><code>{}</code> {} · {}</li>",
                escape(user.id),
                escape(&display_name(user.nickname)),
                escape(user.note)
            )
        })
        .collect();
    let body = format!(
        "<div style=\"padding:16px;font-size:14px;line-height:1.6\"><h3>wxgate mock WeChat</h3>\
         <p>appid <code>{}</code></p><ul>\
         <li>GET /connect/oauth2/authorize</li><li>/sns/oauth2/access_token, /sns/oauth2/refresh_token, /sns/userinfo, /sns/auth</li>\
         <li>GET|POST /_mock/faults · POST /_mock/reset · GET /_mock/stats · GET|POST /_mock/clock · GET /_mock/users · POST /_mock/users {{\"id\": …, \"nickname\": …}} · GET /_mock/secrets</li></ul>\
         <p>Users (cookie <code>mock_user=&lt;id&gt;</code>):</p><ul>{users}</ul></div>",
        escape(appid)
    );
    page("mock WeChat", &body)
}

/// Control characters make no sense on screen (they stay in the JSON API on purpose).
fn display_name(nickname: &str) -> String {
    nickname.chars().filter(|c| !c.is_control()).collect()
}

/// The same escaping as the gateway's own pages.
pub use crate::pages::escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_page_has_wechats_title_markup() {
        let html = error_page("redirect_uri域名与后台配置不一致", Some(10003));
        assert!(html.contains(
            "<h4 class=\"weui_msg_title\">redirect_uri域名与后台配置不一致，错误码:10003</h4>"
        ));
    }

    #[test]
    fn consent_page_escapes_what_it_shows() {
        let user = MockUser::Fixture(&USERS[0]);
        let html = consent_page("<app>", &user, "/a?x=1&y=2", "/d", &[]);
        assert!(html.contains("&lt;app&gt;") && !html.contains("<app>"));
        assert!(html.contains("href=\"/a?x=1&amp;y=2\""));
        assert!(html.contains("允许") && html.contains("拒绝"));
    }
}
