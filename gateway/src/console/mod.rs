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
    pub brotli: &'static [u8],
}

/// How an asset goes over the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Coding {
    Brotli,
    Gzip,
    Identity,
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
    let coding = negotiate(request);
    let (body, encoding) = match coding {
        Coding::Brotli => (asset.brotli, Some("br")),
        Coding::Gzip => (asset.gzip, Some("gzip")),
        Coding::Identity => (asset.raw, None),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.name)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
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

/// The smallest coding the request accepts (RFC 9110 §12.5.3): the highest weight wins, brotli before gzip on a
/// tie; `*` stands for a coding not named; a weight of 0 refuses. Unencoded when neither is accepted.
fn negotiate(headers: &HeaderMap) -> Coding {
    let weights: Vec<(&str, f32)> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(weighted)
        .collect();
    let weight = |name: &str| {
        let named = weights.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
        named
            .or_else(|| weights.iter().find(|(n, _)| *n == "*"))
            .map_or(0.0, |(_, q)| *q)
    };
    let (brotli, gzip) = (weight("br"), weight("gzip"));
    match (brotli, gzip) {
        (b, g) if b > 0.0 && b >= g => Coding::Brotli,
        (_, g) if g > 0.0 => Coding::Gzip,
        _ => Coding::Identity,
    }
}

/// `name;q=0.5` as (name, 0.5); no weight is 1, a malformed one 0.
fn weighted(coding: &str) -> (&str, f32) {
    let mut parts = coding.split(';');
    let name = parts.next().unwrap_or("").trim();
    let q = parts
        .filter_map(|p| p.trim().strip_prefix("q="))
        .next()
        .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
    (name, q)
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
    fn the_smallest_accepted_coding_is_chosen() {
        let cases = [
            ("gzip, deflate, br, zstd", Coding::Brotli),
            ("br;q=1.0, GZIP;q=0.5", Coding::Brotli),
            ("br;q=0.4, gzip;q=0.5", Coding::Gzip),
            ("gzip;q=0, br", Coding::Brotli),
            ("gzip", Coding::Gzip),
            ("br;q=0, gzip;q=0.000", Coding::Identity),
            ("*", Coding::Brotli),
            ("*;q=0.3, br;q=0", Coding::Gzip),
            ("br;q=nonsense, gzip", Coding::Gzip),
            ("identity", Coding::Identity),
        ];
        for (header, coding) in cases {
            assert_eq!(negotiate(&with_encoding(header)), coding, "{header}");
        }
        assert_eq!(negotiate(&HeaderMap::new()), Coding::Identity);
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
