//! A deadline on reading a request's body (`http.body_timeout_secs`), so a client that trickles its body
//! (slowloris) gives up its connection and the gateway's buffers instead of holding them. Answered 408.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use fleet_shared::ErrorCode;
use futures::StreamExt;

use crate::http::error::ApiError;
use crate::state::AppState;

/// Middleware: the body must arrive in full within the deadline from the request's start.
pub async fn body_deadline<F: Future<Output = Response>>(
    state: &AppState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    // Most requests (GETs) carry no body: nothing to watch.
    let headers = request.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body {
        return next(request).await;
    }
    let limit = fleet_shared::config::secs(state.config.http.body_timeout_secs);
    let deadline = tokio::time::Instant::now() + limit;
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let flag = expired.clone();
    let stream = futures::stream::unfold(Some(body.into_data_stream()), move |stream| {
        let flag = flag.clone();
        async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(stream))),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Relaxed);
                    let e =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "request body too slow");
                    Some((Err(axum::Error::new(e)), None))
                }
            }
        }
    });
    let response = next(Request::from_parts(parts, Body::from_stream(stream))).await;
    if expired.load(Ordering::Relaxed) {
        return ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                limit.as_secs_f64()
            ),
        )
        .into_response();
    }
    response
}
