//! The web page: one HTML file, one script and one stylesheet, compiled into the binary so the
//! page works with no build step, no CDN and no network beyond the listener itself. The page
//! holds no data: it asks for a token (kept in the tab's sessionStorage) and calls the JSON API
//! like any other client, so it can see and do exactly what its token may.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Media type sent as Content-Type.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static str,
}

/// Paths served and their files.
const ASSETS: &[(&str, Asset)] = &[
    (
        "/",
        Asset {
            content_type: "text/html; charset=utf-8",
            body: include_str!("page/index.html"),
        },
    ),
    (
        "/app.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("page/app.js"),
        },
    ),
    (
        "/app.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("page/app.css"),
        },
    ),
];

/// Header lines (each ending in CRLF) sent with every response of the listener. Scripts and
/// styles only from the listener itself and no inline code (so an injected string can never
/// run), no framing (clickjacking), no MIME sniffing, no Referer leaking the page's address.
pub const SECURITY_HEADERS: &str = "Content-Security-Policy: default-src 'none'; \
script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'\r\n\
X-Frame-Options: DENY\r\n\
X-Content-Type-Options: nosniff\r\n\
Referrer-Policy: no-referrer\r\n\
Cross-Origin-Opener-Policy: same-origin\r\n";

/// The embedded file served at `path`, if any (`/index.html` is `/`).
pub fn asset(path: &str) -> Option<Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files_and_no_inline_code() {
        let html = asset("/").expect("page").body;
        assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
        assert!(html.contains(r#"<link rel="stylesheet" href="/app.css">"#));
        // Nothing the CSP would block: no inline script or style, no handler attributes,
        // nothing fetched from elsewhere.
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("<style"), "inline style");
        assert!(!html.contains(" style="), "inline style attribute");
        let handler = html.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler attribute");
        for file in ASSETS {
            assert!(
                !file.1.body.contains("http://"),
                "{} fetches from elsewhere",
                file.0
            );
            assert!(
                !file.1.body.contains("https://"),
                "{} fetches from elsewhere",
                file.0
            );
        }
        // Text from the API goes in as text, never as markup.
        let js = asset("/app.js").expect("script").body;
        assert!(
            !js.contains("innerHTML"),
            "app.js must build nodes, not markup"
        );
        assert!(!js.contains("eval("));
        assert!(asset("/index.html").is_some());
        assert!(asset("/nope").is_none());
    }
}
