//! Reading Prometheus (OpenMetrics) text in tests.

use std::collections::BTreeMap;

/// The value of the sample `series` (name and labels exactly as exported), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// Samples of metric `name` by their label text, e.g. `{agent="echo",status="completed"}` → value.
pub fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            labels.starts_with('{').then(|| (labels.to_string(), value))
        })
        .collect()
}

pub async fn scrape(url: &str) -> String {
    let r = reqwest::get(url).await.expect("scrape");
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    r.text().await.expect("body")
}
