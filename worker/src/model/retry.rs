//! When to ask a model server again: 429 and 5xx (and a connection that failed) are retried with backoff,
//! honouring `Retry-After`, as long as the wait ends before the job's deadline.

use std::time::Duration;

use reqwest::StatusCode;

/// First wait after a failed request; each later one doubles, up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(250);
const MAX_WAIT: Duration = Duration::from_secs(8);

pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// The wait before try `tries + 1`: the server's `Retry-After` (seconds or an HTTP date) where it gave one,
/// else exponential backoff.
pub fn wait(tries: u32, retry_after: Option<&str>) -> Duration {
    retry_after
        .and_then(parse_retry_after)
        .unwrap_or_else(|| FIRST_WAIT.saturating_mul(1 << tries.min(10)).min(MAX_WAIT))
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_over_backoff_in_either_form() {
        assert_eq!(wait(0, Some("2")), Duration::from_secs(2));
        assert_eq!(wait(3, Some(" 0.5 ")), Duration::from_millis(500));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = wait(0, Some(&soon));
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            wait(0, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_ignores_nonsense() {
        assert_eq!(wait(0, None), FIRST_WAIT);
        assert_eq!(wait(2, Some("soon")), FIRST_WAIT * 4);
        assert_eq!(wait(40, None), MAX_WAIT);
        assert!(
            is_retryable(StatusCode::TOO_MANY_REQUESTS) && is_retryable(StatusCode::BAD_GATEWAY)
        );
        assert!(!is_retryable(StatusCode::BAD_REQUEST) && !is_retryable(StatusCode::UNAUTHORIZED));
    }
}
