//! Rate limits: per client IP on every request (before authentication, so guessing keys is slow too), and per
//! caller — an API key, or the IP when keys are off — on submissions and on other requests. Past a limit: 429
//! `rate_limited` with `Retry-After`. Limits are per gateway replica.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleet_shared::config::HttpConfig;
use fleet_shared::ErrorCode;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::Caller;
use crate::http::client_ip::client_ip;
use crate::http::error::ApiError;
use crate::state::AppState;

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    submit: Option<DefaultKeyedRateLimiter<String>>,
    read: Option<DefaultKeyedRateLimiter<String>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_sec: u32,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(http: &HttpConfig) -> Self {
        Self {
            per_ip: limiter(http.ip_per_sec, http.ip_burst),
            submit: limiter(http.submit_per_sec, http.submit_burst),
            read: limiter(http.read_per_sec, http.read_burst),
        }
    }

    /// Forgets callers that have been quiet long enough to be back at full burst (bounds the memory).
    pub fn forget_idle(&self) {
        for l in [&self.submit, &self.read].into_iter().flatten() {
            l.retain_recent();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
    }
}

fn limited(wait: Duration, what: &str) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        ErrorCode::RateLimited,
        format!("too many {what}; retry in {secs} s"),
    )
    .retry_after(secs)
    .into_response()
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
) -> Result<(), Duration> {
    match limiter {
        // The limiter's own clock: a new one measures the CPU (a `cpuid`, which costs a VM exit) on every refusal.
        Some(l) => l
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(l.clock().now())),
        None => Ok(()),
    }
}

/// Middleware, before authentication: every request counts against its client IP.
pub async fn per_ip(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(ip) = client_ip(&request, &state.trusted_proxies) {
        if let Err(wait) = check(&state.rate.per_ip, &ip) {
            return limited(wait, "requests from this address");
        }
    }
    next.run(request).await
}

fn is_submission(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == Method::POST
        && (matches!(path, "/v1/jobs" | "/interact" | "/execute" | "/generate")
            || (path.starts_with("/v1/jobs/") && path.ends_with("/retry")))
}

/// Middleware, after authentication: submissions and other requests count against the caller.
pub async fn per_caller(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let caller = match request.extensions().get::<Caller>() {
        Some(Caller::Authenticated { principal, .. }) => Some(principal.id.clone()),
        Some(Caller::Open) => {
            client_ip(&request, &state.trusted_proxies).map(|ip| format!("ip:{ip}"))
        }
        // Public paths (probes, metrics, docs) carry no caller.
        None => None,
    };
    if let Some(caller) = caller {
        let (limiter, what) = if is_submission(&request) {
            (&state.rate.submit, "submissions")
        } else {
            (&state.rate.read, "requests")
        };
        if let Err(wait) = check(limiter, &caller) {
            return limited(wait, what);
        }
    }
    next.run(request).await
}
