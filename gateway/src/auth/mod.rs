//! Who is calling, and what they may do. Every API request but health, readiness, metrics, the docs and
//! `/token` carries an API key (`Authorization: Bearer fk_...` or `X-API-Key`) or an access token from `/token`
//! when `auth.mode = required`; the key's scopes decide
//! which agents it may run and whether it may read others' jobs, cancel, or configure sharing. Jobs record the
//! key's name as their owner. Keys live hashed in the keys bucket; each gateway follows the bucket, so a revoked
//! key stops working on every replica at once.

pub mod links;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::sync::RwLock;

use async_nats::jetstream::kv::{self, Operation};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use fleet_shared::auth::{self, Scopes, StoredKey};
use fleet_shared::codec::{decode, Format};
use fleet_shared::{ErrorCode, JobRecord};
use futures::StreamExt;

use crate::http::error::ApiError;
use crate::state::AppState;

/// The keys of the keys bucket, kept current by a watch.
pub struct KeyRing {
    bucket: kv::Store,
    keys: RwLock<HashMap<String, StoredKey>>,
}

impl KeyRing {
    pub fn new(bucket: kv::Store) -> Self {
        Self {
            bucket,
            keys: RwLock::new(HashMap::new()),
        }
    }

    pub fn bucket(&self) -> &kv::Store {
        &self.bucket
    }

    /// Follows the bucket (every key, then every change) until the watch ends or fails.
    pub async fn follow(&self) -> Result<(), async_nats::Error> {
        let mut watch = self.bucket.watch_all_from_revision(1).await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let mut keys = self.keys.write().map_err(|_| "key ring poisoned")?;
            match entry.operation {
                Operation::Put => match decode::<StoredKey>(&entry.value, Format::MessagePack) {
                    Ok(key) => {
                        keys.insert(entry.key.clone(), key);
                    }
                    Err(e) => {
                        tracing::warn!(key_id = %entry.key, error = %e, "unreadable API key entry")
                    }
                },
                Operation::Delete | Operation::Purge => {
                    keys.remove(&entry.key);
                }
            }
        }
        Ok(())
    }

    /// The stored key with this id: from the ring, or from the bucket if the ring has not seen it yet.
    async fn find(&self, id: &str) -> Result<Option<StoredKey>, ApiError> {
        if let Some(key) = self.keys.read().ok().and_then(|k| k.get(id).cloned()) {
            return Ok(Some(key));
        }
        let entry = self
            .bucket
            .get(id)
            .await
            .map_err(|e| ApiError::unavailable("reading the API key failed", e))?;
        Ok(entry.and_then(|v| decode(&v, Format::MessagePack).ok()))
    }
}

/// The caller of a request, as authentication found it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off (`auth.mode = none`, loopback only): everything is allowed.
    Open,
    /// An API key or a signed-in user: who it is and what it may do.
    Authenticated {
        principal: Principal,
        scopes: Scopes,
    },
}

/// A caller's identity, as jobs record their owner. The id is what no other caller can take (a key's id, a
/// configured user's name in a namespace of its own); the name is a label (a key's name is free text, and any
/// `manage_keys` holder may give a new key the same one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: String,
}

impl Principal {
    pub fn key(key_id: &str, name: &str) -> Self {
        Self {
            id: format!("key:{key_id}"),
            name: name.to_string(),
        }
    }

    pub fn user(name: &str) -> Self {
        Self {
            id: format!("user:{name}"),
            name: name.to_string(),
        }
    }

    /// Whether this principal owns a job whose record names `owner`. Records written before principals hold the
    /// submitting key's or user's name, and match that name as they always did (they expire with the retention).
    fn owns(&self, owner: &str) -> bool {
        let legacy = !owner.starts_with("key:") && !owner.starts_with("user:");
        owner == self.id || (legacy && owner == self.name)
    }
}

impl Caller {
    pub fn scopes(&self) -> std::borrow::Cow<'_, Scopes> {
        match self {
            Self::Open => std::borrow::Cow::Owned(Scopes::all()),
            Self::Authenticated { scopes, .. } => std::borrow::Cow::Borrowed(scopes),
        }
    }

    /// The owner recorded on the caller's jobs (its principal's id).
    pub fn owner(&self) -> Option<String> {
        self.principal().map(|p| p.id.clone())
    }

    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Open => None,
            Self::Authenticated { principal, .. } => Some(principal),
        }
    }

    pub fn may_run(&self, agent: &str) -> Result<(), ApiError> {
        if self.scopes().may_run(agent) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this API key may not run agent `{agent}`"),
            ))
        }
    }

    /// Whether the caller may see this job at all (others' jobs are reported as not found, not as forbidden).
    pub fn may_read(&self, record: &JobRecord) -> bool {
        self.may_read_owned_by(record.request.owner.as_deref())
    }

    /// The one authorization check of every reference a caller makes (a job, a session, their files): whether it
    /// may see what `owner` owns.
    pub fn may_read_owned_by(&self, owner: Option<&str>) -> bool {
        match self.readable_owners() {
            None => true,
            Some(owners) => owner.is_some_and(|owner| owners.iter().any(|o| o == owner)),
        }
    }

    /// The owners whose jobs this caller may read, `None` when it may read every job: its principal's id, and
    /// its name for records from before principals (whose owner is a bare name).
    pub fn readable_owners(&self) -> Option<Vec<String>> {
        match self {
            Self::Open => None,
            Self::Authenticated { scopes, .. } if scopes.read_all => None,
            Self::Authenticated { principal, .. } => {
                let mut owners = vec![principal.id.clone()];
                if principal.owns(&principal.name) && principal.name != principal.id {
                    owners.push(principal.name.clone());
                }
                Some(owners)
            }
        }
    }

    pub fn require(&self, allowed: impl Fn(&Scopes) -> bool, what: &str) -> Result<(), ApiError> {
        if allowed(&self.scopes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this API key may not {what}"),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the request was not authenticated"))
    }
}

/// Paths anyone may call: probes, metrics and the API's own description.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/metrics" | "/openapi.json" | "/token"
    ) || path == "/docs"
        || path.starts_with("/docs/")
        // The console's page and assets: it signs in through the API.
        || path == "/"
        || path == "/qr"
        || path.starts_with("/ui/")
}

fn presented_key(parts: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(value) = parts
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then_some(key.trim());
    }
    parts
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fleet\""),
    );
    response
}

/// Middleware: finds the caller, or answers 401 before any handler runs (so nothing is queued).
pub async fn authenticate<F: Future<Output = Response>>(
    state: &AppState,
    mut request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let caller = if !state.config.auth.required() {
        Caller::Open
    } else if is_public(request.uri().path()) {
        return next(request).await;
    } else {
        let ticket = links::presented(request.uri().query())
            .filter(|_| request.method() == axum::http::Method::GET)
            .filter(|_| presented_key(request.headers()).is_none());
        let found = match ticket {
            Some(ticket) => through_link(state, ticket, request.uri().path()).await,
            None => identify(state, request.headers()).await,
        };
        match found {
            Ok(caller) => caller,
            Err(refusal) => return refusal,
        }
    };
    if let Caller::Authenticated { principal, .. } = &caller {
        tracing::Span::current().record("caller", principal.id.as_str());
    }
    request.extensions_mut().insert(caller);
    next(request).await
}

/// The caller the request's credentials name: an API key, or an access token from `POST /token`.
async fn identify(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Caller, Response> {
    let Some(presented) = presented_key(headers) else {
        return Err(unauthorized(
            "an API key is required: `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        ));
    };
    if !presented.starts_with("fk_") {
        return crate::auth::tokens::caller_of(&state.config.auth, &state.revoked, presented)
            .ok_or_else(|| {
                unauthorized("the credentials are malformed, expired or wrongly signed")
            });
    }
    let Some((id, secret)) = auth::parse(presented) else {
        return Err(unauthorized("the API key is malformed"));
    };
    match state.keys.find(id).await {
        Ok(Some(key)) if key.accepts(secret) => Ok(Caller::Authenticated {
            principal: Principal::key(id, &key.name),
            scopes: key.scopes,
        }),
        Ok(_) => Err(unauthorized("the API key is unknown or revoked")),
        Err(e) => Err(e.into_response()),
    }
}

/// The caller a download link's ticket names, as it is now: a key still in the ring with its scopes, or a
/// configured user.
async fn through_link(state: &AppState, ticket: &str, path: &str) -> Result<Caller, Response> {
    let now = chrono::Utc::now().timestamp();
    let Some(principal) = links::verify(&state.sealer, ticket, path, now) else {
        return Err(unauthorized(
            "the download link is not for this path, or has expired (links work for a minute: ask for a new one)",
        ));
    };
    let gone =
        || unauthorized("the download link's API key was revoked, or its user no longer exists");
    if let Some(key_id) = principal.strip_prefix("key:") {
        return match state.keys.find(key_id).await {
            Ok(Some(key)) if key.in_force() => Ok(Caller::Authenticated {
                principal: Principal::key(key_id, &key.name),
                scopes: key.scopes,
            }),
            Ok(_) => Err(gone()),
            Err(e) => Err(e.into_response()),
        };
    }
    let name = principal.strip_prefix("user:").ok_or_else(gone)?;
    let user = state.config.auth.users.get(name).ok_or_else(gone)?;
    Ok(Caller::Authenticated {
        principal: Principal::user(name),
        scopes: user.scopes.clone(),
    })
}

/// `auth.mode = none` is for a gateway only this machine can reach.
pub fn check_mode(config: &fleet_shared::config::Config) -> Result<(), String> {
    if config.auth.required() {
        return Ok(());
    }
    let addr = config.http.socket_addr();
    if addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "AUTHENTICATION IS OFF (auth.mode = none): anyone who can reach {addr} may run any agent"
        );
        Ok(())
    } else {
        Err(format!(
            "auth.mode = none is allowed only on a loopback address, not {addr}: create API keys with \
             `fleet keys create` and set auth.mode = required, or listen on 127.0.0.1"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_principals_and_names_match_only_records_from_before_them() {
        let alice = Principal::key("0123456789ab", "alice");
        assert!(alice.owns("key:0123456789ab"));
        // Another key named alice, and a user called alice, are other owners.
        assert!(!Principal::key("ba9876543210", "alice").owns("key:0123456789ab"));
        assert!(!Principal::user("alice").owns("key:0123456789ab"));
        assert!(!alice.owns("user:alice"));
        // A record written before principals names its key by name.
        assert!(alice.owns("alice"));
        assert!(!alice.owns("bob"));
    }
}
