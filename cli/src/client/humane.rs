//! Times and durations as people read them: one format, to the second (`2026-12-02 06:35:44 UTC`), relative
//! where it helps (`12 s ago`). Machine output (`--json`) keeps the API's RFC 3339.

use chrono::{DateTime, Utc};

/// `2026-12-02 06:35:44 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `2026-12-02 06:35:44 UTC (12 s ago)`.
pub fn time_and_age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", time(t), age(t, now))
}

/// `12 s ago`, `3 min ago`, `5 h ago`, `2 d ago`; `just now` within a second.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    match secs {
        ..=0 => "just now".into(),
        1..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86400),
    }
}

/// `0.25 s`, `42 s`, `3 min 4 s`, `2 h 5 min`.
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..10 => format!("{:.2} s", ms as f64 / 1000.0),
        10..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// The time between two instants, in the format of [`duration`].
pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    duration((to - from).num_milliseconds().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_to_the_second_and_ages_relative() {
        let t = DateTime::parse_from_rfc3339("2026-12-02T06:35:44.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time(t), "2026-12-02 06:35:44 UTC");
        assert_eq!(age(t, t + chrono::Duration::seconds(12)), "12 s ago");
        assert_eq!(age(t, t + chrono::Duration::minutes(3)), "3 min ago");
        assert_eq!(age(t, t + chrono::Duration::hours(49)), "2 d ago");
        assert_eq!(age(t, t), "just now");
    }

    #[test]
    fn durations_grow_units() {
        assert_eq!(duration(250), "0.25 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(184_000), "3 min 4 s");
        assert_eq!(duration(7_500_000), "2 h 5 min");
    }
}
