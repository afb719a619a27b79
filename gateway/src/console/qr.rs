//! `GET /qr`: a page with a QR code of the console's address as a phone on the same network reaches it, and the
//! same code as terminal text for `fleet up`. The page is plain HTML and SVG (no script), under the console's
//! policy.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use qrcode::{Color, QrCode};

use super::address;
use crate::state::AppState;

/// Modules of light margin around the code, as the standard asks for.
const QUIET_ZONE: usize = 4;

/// `GET /qr`.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (url, note) = target(&state, &headers);
    let svg = QrCode::new(url.as_bytes()).map_or_else(|_| String::new(), |code| svg(&code));
    let body = html(&url, &svg, note);
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    super::protect(h);
    response
}

/// The address to encode and what to tell the reader about it. A request that reached the gateway by a name or
/// address other than loopback came the way a phone would (that name, through any proxy); otherwise the
/// gateway's own listen address says how it is reached from the network, if at all.
fn target(state: &AppState, headers: &HeaderMap) -> (String, Option<&'static str>) {
    if let Some(host) = outside_host(headers) {
        let scheme = match headers.get("x-forwarded-proto").map(HeaderValue::as_bytes) {
            Some(b"https") => "https",
            _ => "http",
        };
        return (format!("{scheme}://{host}/"), None);
    }
    let Some(listen) = state.listen_addr() else {
        return ("http://127.0.0.1/".into(), Some(LOOPBACK_ONLY));
    };
    match address::lan_url(listen, &address::interface_ips()) {
        Some(url) => (url, None),
        None => (address::local_url(listen), Some(LOOPBACK_ONLY)),
    }
}

const LOOPBACK_ONLY: &str =
    "This gateway listens on loopback only, so only this machine can open it. \
    Start it with --http 0.0.0.0:8080 (and API keys or users) to reach it from a phone.";

/// The request's `Host`, unless it names this machine's loopback (or is missing or malformed).
fn outside_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    (valid && !loopback).then_some(host)
}

/// The code as an SVG that scales to its box: one path of unit squares, dark on light.
pub fn svg(code: &QrCode) -> String {
    let width = code.width();
    let side = width + 2 * QUIET_ZONE;
    let mut path = String::new();
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color == Color::Dark {
            let (x, y) = (i % width + QUIET_ZONE, i / width + QUIET_ZONE);
            path.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" role=\"img\" \
         aria-label=\"QR code of the console's address\" shape-rendering=\"crispEdges\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>"
    )
}

/// The code as lines of half-block characters, two rows of modules per line, for a terminal. Light modules are
/// drawn (the terminal's text colour) and dark ones left blank (its background), so it reads on the usual dark
/// terminal.
pub fn terminal(url: &str) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let side = width + 2 * QUIET_ZONE;
    let light = |x: usize, y: usize| {
        let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&x)
            && (QUIET_ZONE..QUIET_ZONE + width).contains(&y);
        !inside || colors[(y - QUIET_ZONE) * width + (x - QUIET_ZONE)] == Color::Light
    };
    let mut out = String::new();
    for y in (0..side).step_by(2) {
        for x in 0..side {
            let below = y + 1 < side && light(x, y + 1);
            out.push(match (light(x, y), below) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Some(out)
}

fn html(url: &str, svg: &str, note: Option<&str>) -> String {
    let url = escape(url);
    let style = format!("{}style.css", super::PREFIX);
    let note = note.map_or(String::new(), |n| format!("<p class=\"note\">{n}</p>"));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>Open on a phone · fleet</title>\
         <link rel=\"stylesheet\" href=\"{style}\"></head>\n<body><main class=\"qr\">\
         <h1>Open the console on a phone</h1><figure>{svg}<figcaption><a href=\"{url}\">{url}</a></figcaption>\
         </figure>{note}<p><a href=\"/\">Back to the console</a></p></main></body></html>\n"
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn loopback_hosts_are_not_how_a_phone_arrives() {
        for local in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:80",
            "0.0.0.0:1",
        ] {
            assert_eq!(outside_host(&host(local)), None, "{local}");
        }
        assert_eq!(outside_host(&HeaderMap::new()), None);
        assert_eq!(
            outside_host(&host("192.168.1.9:8080")),
            Some("192.168.1.9:8080")
        );
        assert_eq!(outside_host(&host("fleet.example")), Some("fleet.example"));
        assert_eq!(outside_host(&host("a\"><script>")), None, "not a host name");
    }

    /// Reads the module grid back out of the terminal text and compares it with the code's own.
    #[test]
    fn terminal_text_draws_the_code_of_the_url() {
        let url = "http://192.168.1.9:8080/";
        let text = terminal(url).unwrap();
        let code = QrCode::new(url.as_bytes()).unwrap();
        let side = code.width() + 2 * QUIET_ZONE;
        let mut light = vec![vec![false; side]; side];
        for (line, chars) in text.lines().enumerate() {
            for (x, c) in chars.chars().enumerate() {
                let (top, bottom) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    _ => (false, false),
                };
                light[2 * line][x] = top;
                if 2 * line + 1 < side {
                    light[2 * line + 1][x] = bottom;
                }
            }
        }
        for (i, color) in code.to_colors().iter().enumerate() {
            let (x, y) = (i % code.width() + QUIET_ZONE, i / code.width() + QUIET_ZONE);
            assert_eq!(light[y][x], *color == Color::Light, "module {x},{y}");
        }
        assert!(light[0].iter().all(|&l| l), "a light quiet zone");
    }

    #[test]
    fn svg_draws_one_square_per_dark_module() {
        let code = QrCode::new(b"http://10.0.0.2:8080/").unwrap();
        let drawn = svg(&code).matches("h1v1h-1z").count();
        let dark = code
            .to_colors()
            .iter()
            .filter(|c| **c == Color::Dark)
            .count();
        assert_eq!(drawn, dark);
    }

    #[test]
    fn the_page_escapes_the_address() {
        let page = html("http://a/\"<b>", "", None);
        assert!(page.contains("http://a/&quot;&lt;b&gt;"));
        assert!(!page.contains("<b>"));
    }
}
