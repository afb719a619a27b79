//! The only place errors become HTTP responses: one table from stable error code to status, and one problem
//! body `{code, message, request_id}`. Rejections of extractors answer in the same shape.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_shared::ErrorCode;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds a client should wait before retrying (queue full, NATS away).
    pub retry_after: Option<u64>,
}

/// The problem body every error response carries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: String,
    /// On the OpenAI-compatible routes only: the same error where OpenAI's SDKs look for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OpenAiErrorDetail>,
}

/// OpenAI's error object (`{"message", "type", "code"}`), also sent as a streamed answer's last event when the
/// job behind it fails.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: ErrorCode,
}

impl OpenAiErrorDetail {
    pub fn of(error: &ApiError) -> Self {
        let kind = match status_of(error.code) {
            s if s.is_server_error() => "server_error",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "invalid_request_error",
        };
        Self {
            message: error.message.clone(),
            kind,
            code: error.code,
        }
    }
}

/// `{"error": {...}}`: how an OpenAI stream says it failed.
#[derive(Debug, Serialize)]
pub struct OpenAiErrorEvent {
    pub error: OpenAiErrorDetail,
}

/// An error on the OpenAI-compatible routes: the same status and problem body, with OpenAI's `error` beside.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let detail = OpenAiErrorDetail::of(&self.0);
        self.0.respond(Some(detail))
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedJson | ErrorCode::InvalidName | ErrorCode::MalformedRequest => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ErrorCode::InvalidRequest
        | ErrorCode::UnknownAgent
        | ErrorCode::InvalidJob
        | ErrorCode::TargetUnreachable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotFound | ErrorCode::JobNotFound | ErrorCode::SessionNotFound => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited | ErrorCode::TooManyJobs => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::IdempotencyConflict | ErrorCode::JobFinished | ErrorCode::NotRetryable => {
            StatusCode::CONFLICT
        }
        ErrorCode::QueueFull | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // A job the gateway waited on ended badly: the upstream (the agent) failed.
        ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::NonzeroExit
        | ErrorCode::ArtifactUploadFailed
        | ErrorCode::WorkerLost
        | ErrorCode::SpawnFailed
        | ErrorCode::Cancelled
        | ErrorCode::LimitExceeded
        | ErrorCode::ModelError
        | ErrorCode::WorkspaceTooLarge
        | ErrorCode::WorkspaceUnavailable => StatusCode::BAD_GATEWAY,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn job_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::JobNotFound, format!("no job with id {id}"))
    }

    /// NATS or JetStream failed: the detail goes to the log, the client gets a retryable 503.
    pub fn unavailable(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %error, "{context}");
        Self::new(
            ErrorCode::Unavailable,
            "the job system is unavailable; retry shortly",
        )
        .retry_after(1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(None)
    }
}

impl ApiError {
    fn respond(self, openai: Option<OpenAiErrorDetail>) -> Response {
        let status = status_of(self.code);
        let request_id = uuid::Uuid::now_v7().to_string();
        if status.is_server_error() {
            tracing::warn!(code = %self.code, request_id, message = %self.message, "request failed");
        }
        let body = Problem {
            code: self.code,
            message: self.message,
            request_id,
            error: openai,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = match &r {
            JsonRejection::JsonSyntaxError(_) => ErrorCode::MalformedJson,
            JsonRejection::JsonDataError(_) => ErrorCode::InvalidRequest,
            JsonRejection::MissingJsonContentType(_) => ErrorCode::UnsupportedMediaType,
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ErrorCode::PayloadTooLarge
            }
            _ => ErrorCode::InvalidRequest,
        };
        Self::new(code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidRequest, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(ErrorCode::NotFound, r.body_text())
    }
}

/// `axum::Json` whose rejections are problem bodies.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections are problem bodies.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::Form` whose rejections are problem bodies.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(ApiError))]
pub struct Form<T>(pub T);

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        let code = match &r {
            FormRejection::InvalidFormContentType(_) => ErrorCode::UnsupportedMediaType,
            FormRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ErrorCode::PayloadTooLarge
            }
            _ => ErrorCode::InvalidRequest,
        };
        Self::new(code, r.body_text())
    }
}

/// `axum::extract::Path` whose rejections are problem bodies.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see /docs")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_4xx_or_5xx_status() {
        for code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
        }
    }
}
