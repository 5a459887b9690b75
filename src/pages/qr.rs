//! The "open this page in WeChat" page for non-WeChat browsers on `non_wechat = "qrcode"`
//! routes: self-contained HTML (inline CSS, inline SVG QR code of the page's own URL),
//! Chinese first, then English. Safe under `default-src 'none'; style-src 'unsafe-inline'`.

use super::escape;
use qrcode::QrCode;
use qrcode::render::svg;

/// The `Content-Security-Policy` this page works under (inline style, inline SVG, nothing
/// fetched); send it with `X-Frame-Options: DENY` and `Cache-Control: no-store`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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
.url{{font-family:monospace;font-size:.8rem;word-break:break-all;color:#333}}
</style>
</head>
<body>
<main>
<h1>请在微信中打开此页面</h1>
<p>用微信“扫一扫”扫描下方二维码</p>
<h1 lang="en">Open this page in WeChat</h1>
<p lang="en">Scan the QR code below with WeChat</p>
<div class="qr">{code}</div>
<p class="url">{url}</p>
</main>
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
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"));
        assert!(!page.contains(r#""><script"#));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("&quot;&gt;"));
    }

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        let page = render(URL);
        for external in ["<link", "<script", "src=", "@import", "url("] {
            assert!(!page.contains(external), "{external}");
        }
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
