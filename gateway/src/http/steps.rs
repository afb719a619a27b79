//! Every request's way through the gateway's own steps before its route, as one middleware.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::auth;
use crate::http::{metrics, rate, slow};
use crate::state::AppState;

/// Metrics and tracing, the IP limit, authentication, the caller's limit and the body deadline, in that order,
/// then the route. One layer, not one per step: axum clones the whole stack beneath a layer, and drops it again,
/// for every request at every layer, which was 3–4 % of the gateway's CPU with five.
pub async fn every_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    metrics::track(&state, request, |r| {
        rate::per_ip(&state, r, |r| {
            auth::authenticate(&state, r, |r| {
                rate::per_caller(&state, r, |r| {
                    slow::body_deadline(&state, r, |r| next.run(r))
                })
            })
        })
    })
    .await
}
