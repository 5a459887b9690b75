//! The "open this page in WeChat" page for non-WeChat browsers on `non_wechat = "qrcode"`
//! routes: self-contained HTML (inline CSS, inline SVG QR code of the page's own URL, one
//! inline script allowed by its hash), Chinese first, then English.
//!
//! On a computer the visitor scans the code with their phone's WeChat. On a phone the code
//! is on the very screen WeChat would have to scan, so there the page leads with "复制链接"
//! (copy the link, paste it into a WeChat chat, open it there) and offers the code for
//! another device only; which of the two leads is decided by CSS (`pointer: coarse`), so
//! the page needs no guess from the User-Agent.

use super::escape;
use qrcode::QrCode;
use qrcode::render::svg;

/// The copy button's script: the clipboard API where the browser allows it, else the
/// selected text field and `execCommand`; without script the field is still selectable.
pub const COPY_SCRIPT: &str = "(function(){var b=document.getElementById('copy'),f=document.getElementById('link');\
b.addEventListener('click',function(){f.focus();f.select();f.setSelectionRange(0,f.value.length);\
var done=function(){b.textContent='已复制 · Copied';};\
var old=function(){try{document.execCommand('copy');done();}catch(e){}};\
if(navigator.clipboard&&navigator.clipboard.writeText){navigator.clipboard.writeText(f.value).then(done,old);}else{old();}});})();";

/// The `Content-Security-Policy` this page works under (inline style, inline SVG, the copy
/// script by its SHA-256, nothing fetched); send it with `X-Frame-Options: DENY` and
/// `Cache-Control: no-store`. The hash is checked against [`COPY_SCRIPT`] by a test.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-vFLaihSqm1voS12vOFJVbXXzXq0Hkp3OS1RESAfuh9o='; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Renders the page for `page_url`, the absolute URL the visitor asked for (built by the
/// caller from `server.public_url`, never from the Host header).
pub fn render(page_url: &str) -> String {
    let url = escape(page_url);
    let code = qr_svg(page_url).unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>请在微信中打开 · Open in WeChat</title>
<style>
body{{margin:0;font-family:-apple-system,BlinkMacSystemFont,"PingFang SC","Microsoft YaHei",sans-serif;background:#f2f2f2;color:#222;text-align:center}}
main{{max-width:22rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:12px}}
h1{{font-size:1.25rem;margin:0 0 .25rem}}
p{{margin:.25rem 0;color:#555}}
.qr svg{{width:100%;max-width:240px;height:auto;margin:1rem auto;display:block}}
.copy{{margin:1rem 0}}
.copy input{{width:100%;box-sizing:border-box;font-family:monospace;font-size:.8rem;padding:.5rem;border:1px solid #ddd;border-radius:6px;color:#333;background:#fafafa}}
.copy button{{margin-top:.5rem;padding:.6rem 2rem;border:0;border-radius:6px;background:#07c160;color:#fff;font-size:1rem}}
.phone{{display:none}}
@media (pointer:coarse){{.phone{{display:block}}.computer{{display:none}}.qr svg{{max-width:160px}}}}
</style>
</head>
<body>
<main>
<div class="computer">
<h1>请在微信中打开此页面</h1>
<p>用微信“扫一扫”扫描下方二维码</p>
<h1 lang="en">Open this page in WeChat</h1>
<p lang="en">Scan the QR code below with WeChat</p>
</div>
<div class="phone">
<h1>请在微信中打开此页面</h1>
<p>复制链接，发送到微信聊天（如“文件传输助手”）后点击打开</p>
<h1 lang="en">Open this page in WeChat</h1>
<p lang="en">Copy the link, paste it into a WeChat chat and open it there</p>
</div>
<div class="copy">
<input id="link" type="text" readonly value="{url}" aria-label="链接 · Link">
<button id="copy" type="button">复制链接 · Copy link</button>
</div>
<p class="phone">或在另一台设备上用微信扫码 · Or scan with WeChat on another device</p>
<div class="qr">{code}</div>
</main>
<script>{COPY_SCRIPT}</script>
</body>
</html>
"#
    )
}

/// The QR code as an inline `<svg>` element, or `None` when the URL is too long to encode
/// (the page then shows the URL alone).
fn qr_svg(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000"))
        .light_color(svg::Color("#fff"))
        .build();
    // The renderer emits a standalone document; inline SVG in HTML must not carry the XML prolog.
    let start = image.find("<svg")?;
    Some(image[start..].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://m.example.com/activity/a.html?from=singlemessage&isappinstalled=0";

    #[test]
    fn page_has_both_languages_chinese_first() {
        let page = render(URL);
        let zh = page.find("请在微信中打开此页面").expect("Chinese text");
        let en = page.find("Open this page in WeChat").expect("English text");
        assert!(zh < en, "Chinese comes first");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(r#"name="viewport""#));
    }

    #[test]
    fn page_embeds_the_qr_code_of_the_raw_url_inline() {
        let page = render(URL);
        assert!(page.contains("<svg"));
        assert!(!page.contains("<?xml"), "no XML prolog inside HTML");
        // The SVG must encode the URL itself, not its HTML-escaped form.
        let expected = qr_svg(URL).unwrap();
        assert!(page.contains(&expected));
        assert_ne!(expected, qr_svg(&escape(URL)).unwrap());
        assert_eq!(page.matches("<svg").count(), 1);
    }

    #[test]
    fn page_prints_the_url_escaped() {
        let page = render(URL);
        assert!(page.contains(
            "https://m.example.com/activity/a.html?from=singlemessage&amp;isappinstalled=0"
        ));
    }

    #[test]
    fn hostile_urls_are_escaped_everywhere() {
        let hostile =
            r#"https://m.example.com/"><script>alert('x')</script><img src=x onerror=alert(1)>"#;
        let page = render(hostile);
        assert!(!page.contains("<script>alert"), "{page}");
        assert_eq!(page.matches("<script").count(), 1, "only the page's own");
        assert!(!page.contains("<img"));
        assert!(!page.contains(r#""><script"#));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("&quot;&gt;"));
    }

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        let page = render(URL);
        for external in ["<link", "<script src", "src=", "@import", "url("] {
            assert!(!page.contains(external), "{external}");
        }
    }

    #[test]
    fn the_one_inline_script_is_the_one_the_policy_allows() {
        use base64::Engine;
        use sha2::Digest;
        let page = render(URL);
        assert_eq!(page.matches("<script").count(), 1);
        let start = page.find("<script>").unwrap() + "<script>".len();
        let end = page.find("</script>").unwrap();
        let hash = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(&page.as_bytes()[start..end]));
        assert!(
            CONTENT_SECURITY_POLICY.contains(&format!("script-src 'sha256-{hash}'")),
            "update the hash in CONTENT_SECURITY_POLICY to {hash}"
        );
    }

    #[test]
    fn phones_are_offered_the_link_to_copy() {
        let page = render(URL);
        assert!(page.contains("复制链接"));
        assert!(page.contains(
            r#"id="link" type="text" readonly value="https://m.example.com/activity/a.html?from=singlemessage&amp;isappinstalled=0""#
        ));
        // The scan instruction is the computer's; phones hide it and lead with the copy.
        assert!(
            page.contains("@media (pointer:coarse){.phone{display:block}.computer{display:none}")
        );
        let scan = page.find("扫描下方二维码").unwrap();
        let computer = page.find(r#"<div class="computer">"#).unwrap();
        let phone = page.find(r#"<div class="phone">"#).unwrap();
        assert!(
            computer < scan && scan < phone,
            "the scan text is in the computer's part"
        );
    }

    #[test]
    fn an_unencodable_url_still_renders_the_text() {
        let long = format!("https://m.example.com/?q={}", "x".repeat(8000));
        let page = render(&long);
        assert!(!page.contains("<svg"));
        assert!(page.contains(&long));
        assert!(page.contains("请在微信中打开此页面"));
    }

    #[test]
    fn escape_covers_the_five_html_specials() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("中文 plain"), "中文 plain");
    }
}
