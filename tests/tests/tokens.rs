//! `POST /token`: configured users sign in with a password and get JWT access tokens and rotating refresh tokens.
//! Wrong passwords, expired, wrongly signed, `alg: none` and HS/RS-confused tokens, and refresh tokens used as
//! access tokens are refused (401, nothing queued); a refresh token used twice revokes its whole family.

use std::time::Duration;

use base64::Engine;
use fleet_tests::clients::NatsClient;
use fleet_tests::*;
use serde_json::{json, Value};

const SECRET: &str = "test-signing-secret-0123456789abcdef";

async fn token(api: &Api, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/token", api.base))
        .form(form)
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with this header, these claims, and an HMAC-SHA256 signature under `key` (or none).
fn forge(header: Value, claims: Value, key: Option<&[u8]>) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key
        .map(|k| {
            b64(&fleet_shared::seal::hmac_sha256(
                k,
                signing_input.as_bytes(),
            ))
        })
        .unwrap_or_default();
    format!("{signing_input}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sign_in_and_refresh_tokens_rotate_with_reuse_detection() {
    let nats = NatsServer::start();
    let users = format!(
        "[auth.users.alice]\npassword_hash = \"{}\"\nagents = [\"echo\"]\ncancel = true\n",
        hash_password("correct horse")
    );
    let cfg = test_config_with(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "required"),
            ("FLEET_AUTH_JWT_SECRET", SECRET),
            ("FLEET_AUTH_ACCESS_TOKEN_SECS", "2"),
        ],
        &users,
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let probe = NatsClient::connect(&nats.url()).await;

    for form in [
        vec![("username", "alice"), ("password", "wrong")],
        vec![("username", "mallory"), ("password", "correct horse")],
        vec![("username", "alice")],
    ] {
        let (status, body) = token(&api, &form).await;
        assert_eq!(status, 401, "{form:?}: {body}");
        assert_eq!(body["code"], "unauthorized");
    }
    // Not a form: a problem body like every other refusal.
    let r = api
        .post(
            "/token",
            &json!({"username": "alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(r.body["code"], "unsupported_media_type");
    let (status, signed_in) = token(
        &api,
        &[("username", "alice"), ("password", "correct horse")],
    )
    .await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(signed_in["token_type"], "bearer");
    let access = signed_in["access_token"]
        .as_str()
        .expect("access")
        .to_string();
    let refresh = signed_in["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();

    let alice = api.with_key(&access);
    let r = alice
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": "signed in"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    // A configured user is a principal of its own, never the same owner as a key named alike.
    assert_eq!(r.body["record"]["request"]["owner"], "user:alice");
    assert_eq!(r.body["record"]["request"]["owner_name"], "alice");
    let r = alice
        .post("/v1/jobs", &json!({"agent": "fake", "message": "exit:0"}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Forged and misused tokens.
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"sub": "alice", "typ": "access", "exp": exp, "iat": exp - 600, "jti": "x"});
    let forged = [
        (
            "alg none",
            forge(json!({"alg": "none", "typ": "JWT"}), claims.clone(), None),
        ),
        (
            "another secret",
            forge(
                json!({"alg": "HS256", "typ": "JWT"}),
                claims.clone(),
                Some(b"not-the-secret-not-the-secret-00"),
            ),
        ),
        (
            "RS256 header, HMAC signature",
            forge(
                json!({"alg": "RS256", "typ": "JWT"}),
                claims.clone(),
                Some(SECRET.as_bytes()),
            ),
        ),
        (
            "unknown user",
            forge(
                json!({"alg": "HS256", "typ": "JWT"}),
                json!({"sub": "mallory", "typ": "access", "exp": exp, "jti": "x"}),
                Some(SECRET.as_bytes()),
            ),
        ),
        ("refresh token as access", refresh.clone()),
        ("truncated", access[..access.len() - 4].to_string()),
    ];
    for (what, bad) in forged {
        let r = api
            .with_key(&bad)
            .post("/v1/jobs", &json!({"agent": "echo", "message": "forged"}))
            .await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
    }
    // The forge works when it should: a correctly signed token with these claims is accepted.
    let genuine = forge(
        json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        Some(SECRET.as_bytes()),
    );
    assert_eq!(api.with_key(&genuine).get("/v1/jobs").await.status, 200);
    assert_eq!(
        probe.queued_messages().await,
        0,
        "only the accepted job was queued, and it has run"
    );

    // Rotation: each refresh gives a new pair; the old refresh token is spent.
    let (status, second) = token(
        &api,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let refresh2 = second["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    assert_ne!(refresh2, refresh);
    // Reuse of the spent token revokes the family: the new one stops working too.
    let (status, _) = token(
        &api,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = token(
        &api,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
        ],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // A fresh sign-in is a new family.
    let (_, again) = token(
        &api,
        &[("username", "alice"), ("password", "correct horse")],
    )
    .await;
    let refresh3 = again["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let (status, _) = token(
        &api,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh3),
        ],
    )
    .await;
    assert_eq!(status, 200);

    // Access tokens expire (2 s here), with no leeway.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(alice.get("/v1/jobs").await.status, 401);
    worker.stop().await;
}

/// Reuse of a spent refresh token revokes every token of that sign-in: its access tokens too, on every gateway,
/// within a second (gateways follow the revocation in the tokens bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_revokes_the_sign_ins_access_tokens_on_every_gateway() {
    let nats = NatsServer::start();
    let users = format!(
        "[auth.users.alice]\npassword_hash = \"{}\"\nagents = [\"echo\"]\n",
        hash_password("correct horse")
    );
    let cfg = test_config_with(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "required"),
            ("FLEET_AUTH_JWT_SECRET", SECRET),
            ("FLEET_AUTH_ACCESS_TOKEN_SECS", "600"),
        ],
        &users,
    );
    let (one, other) = (
        start_gateway(&cfg.config).await,
        start_gateway(&cfg.config).await,
    );
    let (_, first) = token(
        &one.api(),
        &[("username", "alice"), ("password", "correct horse")],
    )
    .await;
    let access = first["access_token"].as_str().unwrap().to_string();
    let refresh = first["refresh_token"].as_str().unwrap().to_string();
    let (status, second) = token(
        &one.api(),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let access2 = second["access_token"].as_str().unwrap().to_string();
    // A sign-in of its own, which the revocation must leave alone.
    let (_, unrelated) = token(
        &one.api(),
        &[("username", "alice"), ("password", "correct horse")],
    )
    .await;
    let unrelated = unrelated["access_token"].as_str().unwrap().to_string();
    for gw in [&one, &other] {
        for a in [&access, &access2] {
            assert_eq!(gw.api().with_key(a).get("/v1/jobs").await.status, 200);
        }
    }

    let (status, _) = token(
        &one.api(),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 401);
    let revoked_at = std::time::Instant::now();
    for a in [&access, &access2] {
        assert_eq!(one.api().with_key(a).get("/v1/jobs").await.status, 401);
    }
    eventually("the other gateway refuses the revoked access tokens", Duration::from_secs(1), || {
        let api = other.api();
        let (a, b) = (api.with_key(&access), api.with_key(&access2));
        async move { a.get("/v1/jobs").await.status == 401 && b.get("/v1/jobs").await.status == 401 }
    })
    .await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert_eq!(
        other
            .api()
            .with_key(&unrelated)
            .get("/v1/jobs")
            .await
            .status,
        200
    );
    // A gateway started afterwards knows of the revocation from the start.
    let late = start_gateway(&cfg.config).await;
    eventually(
        "a new gateway refuses them too",
        Duration::from_secs(1),
        || {
            let api = late.api().with_key(&access);
            async move { api.get("/v1/jobs").await.status == 401 }
        },
    )
    .await;
}
