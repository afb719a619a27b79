//! `/v1/keys`: API keys managed over HTTP by a caller holding the `manage_keys` scope, who may grant at most the
//! scopes it holds itself. The same operations as `fleet keys` (both go through `fleet_shared::keys`).

use axum::extract::State;
use axum::http::StatusCode;
use fleet_shared::auth::{KeyView, Scopes};
use fleet_shared::keys::{self, KeysError};
use fleet_shared::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Path, Problem};
use crate::state::AppState;

/// Body of `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Who or what the key is for; jobs it submits record it as their owner.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[serde(default)]
    pub scopes: Scopes,
}

/// A new key. `key` is shown only in this answer; only its hash is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

fn key_error(e: KeysError) -> ApiError {
    match e {
        KeysError::NoName => ApiError::new(ErrorCode::InvalidRequest, e.to_string()),
        KeysError::NotFound(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        KeysError::Nats(_) | KeysError::Decode(_) => {
            ApiError::unavailable("managing API keys failed", e)
        }
    }
}

fn may_manage(caller: &Caller) -> Result<(), ApiError> {
    caller.require(|s| s.manage_keys, "manage API keys")
}

/// Create an API key. The caller needs `manage_keys` and may grant only scopes it holds itself.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "The key, shown only now", body = CreatedKey),
        (status = 403, description = "No `manage_keys`, or scopes beyond the caller's own", body = Problem),
        (status = 503, body = Problem)))]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    may_manage(&caller)?;
    if body.name.chars().count() > 200 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`name` is longer than 200 characters",
        ));
    }
    if !caller.scopes().covers(&body.scopes) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a key may grant only scopes its creator holds (agents, flags, and a max_queued no larger)",
        ));
    }
    let (stored, key) = keys::create(state.keys.bucket(), &body.name, body.scopes)
        .await
        .map_err(key_error)?;
    tracing::info!(key_id = %stored.id, name = %stored.name, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            view: stored.view(),
        }),
    ))
}

/// List API keys (never their secrets), revoked ones included.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = Vec<KeyView>), (status = 403, body = Problem), (status = 503, body = Problem)))]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    may_manage(&caller)?;
    let listed = keys::list(state.keys.bucket()).await.map_err(key_error)?;
    Ok(Json(listed.iter().map(|k| k.view()).collect()))
}

/// Revoke an API key: every gateway refuses it within moments. Revoking it again changes nothing.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, description = "The key, revoked", body = KeyView),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    may_manage(&caller)?;
    let key = keys::revoke(state.keys.bucket(), &id)
        .await
        .map_err(key_error)?;
    tracing::info!(key_id = %key.id, name = %key.name, "API key revoked");
    Ok(Json(key.view()))
}
