//! The web console: `GET /` serves its page, `GET /ui/<hash>/<file>` its scripts and styles, all embedded at build
//! time (`gateway/build.rs`). The page is never cached and names the assets by the hash of their contents, so the
//! assets may be cached for good. Nothing here needs credentials: the console signs in through the API itself.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use fleet_shared::ErrorCode;

pub mod address;
pub mod qr;

pub struct Asset {
    pub name: &'static str,
    pub raw: &'static [u8],
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Scripts and styles only from the gateway itself, no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

const FOREVER: &str = "public, max-age=31536000, immutable";

/// `GET /`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    let page = find("index.html").expect("index.html is embedded");
    serve(page, &headers, "no-cache")
}

/// `GET /ui/{version}/{name}`: one asset; a version other than this build's is gone (the page names the current one).
pub async fn asset(
    Path((version, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let current = PREFIX.trim_start_matches("/ui/").trim_end_matches('/');
    match find(&name) {
        Some(asset) if version == current && name != "index.html" => {
            Ok(serve(asset, &headers, FOREVER))
        }
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no console asset {version}/{name} in this build (reload the console)"),
        )),
    }
}

pub(crate) fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

fn serve(asset: &Asset, request: &HeaderMap, cache: &'static str) -> Response {
    let gzip = accepts_gzip(request);
    let body = if gzip { asset.gzip } else { asset.raw };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.name)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    protect(headers);
    response
}

/// The headers every console response carries.
pub fn protect(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json" | "webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_encoding(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip(&with_encoding("gzip, deflate, br")));
        assert!(accepts_gzip(&with_encoding("br;q=1.0, GZIP;q=0.5")));
        assert!(!accepts_gzip(&with_encoding("gzip;q=0, br")));
        assert!(!accepts_gzip(&with_encoding("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_page_names_this_builds_assets() {
        let page = std::str::from_utf8(find("index.html").unwrap().raw).unwrap();
        assert!(page.contains(&format!("{PREFIX}app.js")), "{page}");
        assert!(!page.contains("{{ASSETS}}"));
        assert!(
            !page.contains("<script>"),
            "no inline script: the policy forbids it"
        );
    }
}
