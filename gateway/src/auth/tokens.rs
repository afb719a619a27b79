//! `POST /token`: users from the configuration sign in with a password (argon2) and get a short-lived JWT access
//! token and a refresh token. Each refresh returns a new refresh token and retires the old one; presenting a
//! retired refresh token again revokes its whole family (it was stolen, or replayed), so neither copy works on:
//! its refresh tokens at once, and its access tokens (which carry the family) on every gateway as soon as the
//! gateway's watch of the tokens bucket sees the revocation (`Revoked`).
//! Tokens are HS256 only: `alg: none`, RS256 and every other algorithm are refused.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{self, Operation};
use axum::extract::State;
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::config::AuthConfig;
use fleet_shared::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Form, Json};
use crate::state::AppState;

const ACCESS: &str = "access";
const REFRESH: &str = "refresh";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// `access` or `refresh`: one is never accepted as the other.
    typ: String,
    exp: u64,
    iat: u64,
    jti: String,
    /// The sign-in (refresh-token family) the token belongs to; revoking it revokes the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fam: Option<String>,
}

/// A refresh-token family as stored: the one token id that may be used next.
#[derive(Debug, Serialize, Deserialize)]
struct Family {
    user: String,
    current: String,
    revoked: bool,
}

/// The form of `POST /token` (OAuth2 password and refresh_token grants; seed-compatible username + password).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `password` (the default) or `refresh_token`.
    #[serde(default)]
    pub grant_type: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds the access token is valid.
    pub expires_in: u64,
    pub refresh_token: String,
}

fn now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

fn denied(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.validate_exp = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

fn decode_claims(auth: &AuthConfig, token: &str, typ: &str) -> Option<Claims> {
    let key = DecodingKey::from_secret(auth.jwt_secret.as_bytes());
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation())
        .ok()?
        .claims;
    (claims.typ == typ).then_some(claims)
}

fn sign(auth: &AuthConfig, claims: &Claims) -> Result<String, ApiError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(auth.jwt_secret.as_bytes()),
    )
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("signing a token failed: {e}")))
}

/// Sign-ins whose tokens are revoked, followed from the tokens bucket by every gateway.
#[derive(Clone, Default)]
pub struct Revoked(Arc<RwLock<HashSet<String>>>);

impl Revoked {
    /// Follows the bucket: its current families first, then every change, as they happen.
    pub async fn follow(tokens: &kv::Store) -> Result<Self, async_nats::Error> {
        let revoked = Self::default();
        let first = tokens.watch_all_from_revision(1).await?;
        let set = revoked.clone();
        let bucket = tokens.clone();
        tokio::spawn(fleet_shared::watch::follow(
            "refresh-token families",
            first,
            move || {
                let bucket = bucket.clone();
                async move { bucket.watch_all_from_revision(1).await }
            },
            move |entry| {
                let is_revoked = entry.operation == Operation::Put
                    && decode::<Family>(&entry.value, Format::MessagePack).is_ok_and(|f| f.revoked);
                if let Ok(mut set) = set.0.write() {
                    match is_revoked {
                        true => set.insert(entry.key),
                        false => set.remove(&entry.key),
                    };
                }
            },
        ));
        Ok(revoked)
    }

    fn insert(&self, family: &str) {
        if let Ok(mut set) = self.0.write() {
            set.insert(family.to_string());
        }
    }

    fn contains(&self, family: &str) -> bool {
        self.0.read().is_ok_and(|set| set.contains(family))
    }
}

/// The user an access token speaks for, if it is a valid, unexpired access token of a configured user whose
/// sign-in has not been revoked.
pub fn caller_of(auth: &AuthConfig, revoked: &Revoked, token: &str) -> Option<Caller> {
    if auth.jwt_secret.is_empty() {
        return None;
    }
    let claims = decode_claims(auth, token, ACCESS)?;
    if claims.fam.as_deref().is_some_and(|f| revoked.contains(f)) {
        return None;
    }
    let user = auth.users.get(&claims.sub)?;
    Some(Caller::Authenticated {
        principal: crate::auth::Principal::user(&claims.sub),
        scopes: user.scopes.clone(),
    })
}

fn issue(
    auth: &AuthConfig,
    user: &str,
    family: &str,
    refresh_id: &str,
) -> Result<TokenResponse, ApiError> {
    let iat = now();
    let access_secs = auth.access_token_secs.ceil() as u64;
    let access = Claims {
        sub: user.to_string(),
        typ: ACCESS.into(),
        iat,
        exp: iat + access_secs,
        jti: Uuid::new_v4().to_string(),
        fam: Some(family.to_string()),
    };
    let refresh = Claims {
        sub: user.to_string(),
        typ: REFRESH.into(),
        iat,
        exp: iat + auth.refresh_token_secs.ceil() as u64,
        jti: refresh_id.to_string(),
        fam: Some(family.to_string()),
    };
    Ok(TokenResponse {
        access_token: sign(auth, &access)?,
        token_type: "bearer",
        expires_in: access_secs,
        refresh_token: sign(auth, &refresh)?,
    })
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Sign in (username + password) or refresh (refresh_token): a new access token and a new refresh token.
#[utoipa::path(post, path = "/token", tag = "auth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::http::error::Problem),
        (status = 404, description = "Token sign-in is not configured", body = crate::http::error::Problem)))]
pub async fn token(
    State(state): State<AppState>,
    Form(form): Form<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let auth = &state.config.auth;
    if auth.jwt_secret.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "token sign-in is off: set auth.jwt_secret and configure [auth.users]",
        ));
    }
    match form.grant_type.as_deref().unwrap_or("password") {
        "password" => {
            let (Some(user), Some(password)) = (form.username, form.password) else {
                return Err(denied("username and password are required"));
            };
            // The same answer (and an argon2 run either way) whether the user exists or not.
            let hash = auth.users.get(&user).map(|u| u.password_hash.as_str());
            let valid = verify_password(hash.unwrap_or(DUMMY_HASH), &password) && hash.is_some();
            if !valid {
                return Err(denied("wrong username or password"));
            }
            let family = Uuid::new_v4().to_string();
            let refresh_id = Uuid::new_v4().to_string();
            let entry = Family {
                user: user.clone(),
                current: refresh_id.clone(),
                revoked: false,
            };
            state
                .tokens
                .create(&family, to_msgpack(&entry).into())
                .await
                .map_err(|e| ApiError::unavailable("storing the token family failed", e))?;
            tracing::info!(user, "signed in");
            Ok(Json(issue(auth, &user, &family, &refresh_id)?))
        }
        "refresh_token" => {
            let presented = form.refresh_token.unwrap_or_default();
            let claims = decode_claims(auth, &presented, REFRESH)
                .ok_or_else(|| denied("the refresh token is invalid or expired"))?;
            let family_id = claims
                .fam
                .clone()
                .ok_or_else(|| denied("the refresh token is invalid"))?;
            rotate(&state, &claims, &family_id).await.map(Json)
        }
        other => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("grant_type `{other}` is not supported: use password or refresh_token"),
        )),
    }
}

/// Swaps the family's current refresh token for a new one; a token that is not the current one revokes the family.
async fn rotate(
    state: &AppState,
    claims: &Claims,
    family_id: &str,
) -> Result<TokenResponse, ApiError> {
    let (tokens, auth) = (&state.tokens, &state.config.auth);
    let entry = tokens
        .entry(family_id)
        .await
        .map_err(|e| ApiError::unavailable("reading the token family failed", e))?
        .ok_or_else(|| denied("the refresh token is invalid or expired"))?;
    let mut family: Family = decode(&entry.value, Format::MessagePack)
        .map_err(|e| ApiError::unavailable("the token family is unreadable", e))?;
    if family.revoked || !auth.users.contains_key(&family.user) {
        return Err(denied("the refresh token was revoked"));
    }
    if family.current != claims.jti {
        // A retired token came back: whoever holds the family's tokens, none of them may go on.
        family.revoked = true;
        revoke(state, family_id, &family).await?;
        tracing::warn!(user = %family.user, "a used refresh token was presented again; its family is revoked");
        return Err(denied(
            "the refresh token was already used; all tokens of this sign-in are revoked",
        ));
    }
    let next = Uuid::new_v4().to_string();
    family.current = next.clone();
    // Compare-and-set: of two refreshes racing with the same token, one wins and the other counts as reuse.
    if tokens
        .update(family_id, to_msgpack(&family).into(), entry.revision)
        .await
        .is_err()
    {
        family.revoked = true;
        revoke(state, family_id, &family).await?;
        return Err(denied(
            "the refresh token was already used; all tokens of this sign-in are revoked",
        ));
    }
    issue(auth, &family.user, family_id, &next)
}

/// Marks a sign-in revoked here at once and, through the bucket, on every gateway.
async fn revoke(state: &AppState, family_id: &str, family: &Family) -> Result<(), ApiError> {
    state.revoked.insert(family_id);
    state
        .tokens
        .put(family_id, to_msgpack(family).into())
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable("revoking the sign-in failed", e))
}

/// Hashes `password` for `[auth.users.NAME] password_hash` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verified against when the user does not exist, so unknown and known users take the same time.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2ncpzjTYRi8kR0hU3rYL0cIcKnlmH7ok5kJ0jbs3+uE";
