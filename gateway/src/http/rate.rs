//! Rate limits: per client IP on every request (before authentication, so guessing keys is slow too), and per
//! caller — an API key, or the IP when keys are off — on submissions and on other requests. Past a limit: 429
//! `rate_limited` with `Retry-After`. Limits are per gateway replica.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use fleet_shared::config::HttpConfig;
use fleet_shared::ErrorCode;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::auth::Caller;
use crate::http::client_ip::client_ip;
use crate::http::error::ApiError;
use crate::state::AppState;

/// One limiter per kind of request, on clock `C` (the default clock in service; a fake one in tests).
pub struct RateLimits<C: Clock = DefaultClock> {
    per_ip: Option<Limiter<IpAddr, C>>,
    submit: Option<Limiter<String, C>>,
    read: Option<Limiter<String, C>>,
}

type Limiter<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn limiter<K: std::hash::Hash + Eq + Clone, C: Clock + Clone>(
    per_sec: u32,
    burst: u32,
    clock: &C,
) -> Option<Limiter<K, C>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
    Some(RateLimiter::hashmap_with_clock(
        Quota::per_second(rate).allow_burst(burst),
        clock.clone(),
    ))
}

impl RateLimits {
    pub fn new(http: &HttpConfig) -> Self {
        Self::with_clock(http, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(http: &HttpConfig, clock: &C) -> Self {
        Self {
            per_ip: limiter(http.ip_per_sec, http.ip_burst, clock),
            submit: limiter(http.submit_per_sec, http.submit_burst, clock),
            read: limiter(http.read_per_sec, http.read_burst, clock),
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

    /// How long `ip` must wait, if it is over its limit.
    pub fn check_ip(&self, ip: &IpAddr) -> Result<(), Duration> {
        check(&self.per_ip, ip)
    }

    /// How long `caller` must wait, if it is over its limit for this kind of request.
    pub fn check_caller(&self, caller: &String, submission: bool) -> Result<(), Duration> {
        check(if submission { &self.submit } else { &self.read }, caller)
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

fn check<K: std::hash::Hash + Eq + Clone, C: Clock>(
    limiter: &Option<Limiter<K, C>>,
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
pub async fn per_ip<F: Future<Output = Response>>(
    state: &AppState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    if let Some(ip) = client_ip(&request, &state.trusted_proxies) {
        if let Err(wait) = state.rate.check_ip(&ip) {
            return limited(wait, "requests from this address");
        }
    }
    next(request).await
}

fn is_submission(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == Method::POST
        && (matches!(
            path,
            "/v1/jobs" | "/interact" | "/execute" | "/generate" | "/v1/chat/completions"
        ) || (path.starts_with("/v1/jobs/") && path.ends_with("/retry")))
}

/// Middleware, after authentication: submissions and other requests count against the caller.
pub async fn per_caller<F: Future<Output = Response>>(
    state: &AppState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let caller = match request.extensions().get::<Caller>() {
        Some(Caller::Authenticated { principal, .. }) => Some(principal.id.clone()),
        Some(Caller::Open) => {
            client_ip(&request, &state.trusted_proxies).map(|ip| format!("ip:{ip}"))
        }
        // Public paths (probes, metrics, docs) carry no caller.
        None => None,
    };
    if let Some(caller) = caller {
        let submission = is_submission(&request);
        if let Err(wait) = state.rate.check_caller(&caller, submission) {
            return limited(
                wait,
                if submission {
                    "submissions"
                } else {
                    "requests"
                },
            );
        }
    }
    next(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(clock: &FakeRelativeClock) -> RateLimits<FakeRelativeClock> {
        let mut http = fleet_shared::config::Config::load(&Default::default())
            .expect("defaults")
            .http;
        (http.submit_per_sec, http.submit_burst) = (1, 3);
        (http.ip_per_sec, http.ip_burst) = (1, 4);
        RateLimits::with_clock(&http, clock)
    }

    #[test]
    fn a_caller_past_its_burst_waits_for_the_refill_and_others_do_not() {
        let clock = FakeRelativeClock::default();
        let limits = limits(&clock);
        let (a, b) = ("key:a".to_string(), "key:b".to_string());
        for _ in 0..3 {
            assert_eq!(limits.check_caller(&a, true), Ok(()));
        }
        let wait = limits.check_caller(&a, true).expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limits.check_caller(&b, true), Ok(()), "another caller");
        assert_eq!(
            limits.check_caller(&a, false),
            Ok(()),
            "reads have their own bucket"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(limits.check_caller(&a, true), Ok(()), "refilled by one");
        assert!(limits.check_caller(&a, true).is_err());
    }

    #[test]
    fn an_address_past_its_burst_is_held_back_until_it_refills() {
        let clock = FakeRelativeClock::default();
        let limits = limits(&clock);
        let ip: IpAddr = [127, 0, 0, 2].into();
        let outcomes: Vec<bool> = (0..6).map(|_| limits.check_ip(&ip).is_ok()).collect();
        assert_eq!(outcomes, [true, true, true, true, false, false]);
        clock.advance(Duration::from_secs(4));
        let refilled: Vec<bool> = (0..5).map(|_| limits.check_ip(&ip).is_ok()).collect();
        assert_eq!(refilled, [true, true, true, true, false]);
    }
}
