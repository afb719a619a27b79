//! `POST /configure-sharing` (the agent-interaction server's body, plus S3 settings) sets where the whole fleet
//! stores new jobs' files, at run time: the target is checked, written to the config bucket, and every worker picks
//! it up without a restart. No read ever returns a secret: passwords and keys come back as `***`.

use axum::extract::State;
use fleet_shared::artifacts::targets::{SharingSetting, SHARING_KEY};
use fleet_shared::artifacts::ArtifactStore;
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::config::TargetConfig;
use fleet_shared::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Problem};
use crate::state::AppState;

/// Body of `POST /configure-sharing`. Fields left out keep their defaults (FTP port 21, passive mode, ...).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SharingRequest {
    pub method: SharingMethod,
    pub ftp_host: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub ftp_port: Option<u16>,
    pub ftp_user: Option<String>,
    pub ftp_pass: Option<String>,
    /// Directory on the server under which `<prefix>/<job_id>/<name>` is written.
    pub ftp_path: Option<String>,
    pub ftp_passive: Option<bool>,
    /// Explicit FTPS (AUTH TLS).
    pub ftp_tls: Option<bool>,
    pub s3_bucket: Option<String>,
    pub s3_region: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
}

/// `ftp`, `s3`, `local` (the gateway's and workers' `artifacts.local_dir`), or `default` (back to the configured
/// `[artifacts]` target).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SharingMethod {
    Ftp,
    S3,
    Local,
    #[default]
    Default,
}

impl SharingMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ftp => "ftp",
            Self::S3 => "s3",
            Self::Local => "local",
            Self::Default => "default",
        }
    }
}

/// Where new jobs' files go, secrets masked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SharingView {
    pub method: String,
    /// What new job records name as their `artifact_store` (`default` when no run-time target is set).
    pub target_id: String,
    /// Where files land, as record locations start.
    pub location: String,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl SharingRequest {
    fn into_target(self, state: &AppState) -> Result<TargetConfig, ApiError> {
        let mut t = TargetConfig {
            backend: self.method.as_str().to_string(),
            local_dir: state.config.artifacts.local_dir.clone(),
            ..TargetConfig::default()
        };
        let set = |field: &mut String, v: Option<String>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut t.ftp_host, self.ftp_host);
        set(&mut t.ftp_user, self.ftp_user);
        set(&mut t.ftp_password, self.ftp_pass);
        set(&mut t.ftp_base_path, self.ftp_path);
        set(&mut t.s3_bucket, self.s3_bucket);
        set(&mut t.s3_region, self.s3_region);
        set(&mut t.s3_endpoint, self.s3_endpoint);
        set(&mut t.s3_access_key_id, self.s3_access_key_id);
        set(&mut t.s3_secret_access_key, self.s3_secret_access_key);
        t.ftp_port = self.ftp_port.unwrap_or(t.ftp_port);
        t.ftp_passive = self.ftp_passive.unwrap_or(t.ftp_passive);
        t.ftp_tls = self.ftp_tls.unwrap_or(t.ftp_tls);
        t.s3_path_style = self.s3_path_style.unwrap_or(t.s3_path_style);
        t.validate("")
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        Ok(t)
    }
}

/// The host an S3 endpoint URL names; AWS itself when there is none.
fn endpoint_host(endpoint: &str) -> &str {
    if endpoint.is_empty() {
        return "s3.amazonaws.com";
    }
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

/// The remote host a sharing target connects to (none for local disk).
fn target_host(method: SharingMethod, t: &TargetConfig) -> Option<&str> {
    match method {
        SharingMethod::Ftp => Some(t.ftp_host.as_str()),
        SharingMethod::S3 => Some(endpoint_host(&t.s3_endpoint)),
        SharingMethod::Local | SharingMethod::Default => None,
    }
}

/// How `artifacts.sharing_hosts` (comma-separated hosts, `*.domain` for subdomains) lets sharing use a host.
#[derive(Debug, PartialEq, Eq)]
enum Listed {
    /// Named as itself: the operator chose it, whatever it is.
    Exactly,
    /// Under a `*.domain` pattern: only if it is not an address inside this network.
    ByDomain,
    No,
}

fn listed(host: &str, allowed: &str) -> Listed {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let patterns = allowed.split(',').map(str::trim).filter(|p| !p.is_empty());
    let mut by_domain = false;
    for p in patterns {
        match p.strip_prefix("*.") {
            Some(domain) => {
                by_domain |= host
                    .to_ascii_lowercase()
                    .strip_suffix(&domain.to_ascii_lowercase())
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
            }
            None if host.eq_ignore_ascii_case(p) => return Listed::Exactly,
            None => {}
        }
    }
    if by_domain {
        Listed::ByDomain
    } else {
        Listed::No
    }
}

/// An address a caller must not point the fleet at unless the operator listed it: this machine, the private
/// networks, link-local (cloud metadata services), unspecified.
fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(v4.into()))
        }
    }
}

/// Refuses a host sharing may not use, before any connection is tried. With `artifacts.sharing_hosts` empty (the
/// default) no remote host may be named: only the configured targets and local disk.
async fn check_host(host: &str, allowed: &str, port: u16) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("`{host}` {why} (artifacts.sharing_hosts)"),
        ))
    };
    match listed(host, allowed) {
        Listed::Exactly => Ok(()),
        Listed::No => refuse("is not among the hosts sharing may use"),
        Listed::ByDomain => {
            let resolved = tokio::net::lookup_host((host, port)).await.map_err(|e| {
                ApiError::new(ErrorCode::TargetUnreachable, format!("`{host}`: {e}"))
            })?;
            if resolved.into_iter().any(|a| is_internal(a.ip())) {
                return refuse(
                    "resolves to an address inside this network; list it by name to allow it",
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_hosts_are_matched_exactly_or_by_domain_and_none_by_default() {
        assert_eq!(listed("anything", ""), Listed::No);
        assert_eq!(listed("127.0.0.1", "127.0.0.1, localhost"), Listed::Exactly);
        assert_eq!(listed("LocalHost", "127.0.0.1,localhost"), Listed::Exactly);
        assert_eq!(listed("127.0.0.2", "127.0.0.1"), Listed::No);
        assert_eq!(listed("ftp.example.com", "*.example.com"), Listed::ByDomain);
        assert_eq!(listed("example.com", "*.example.com"), Listed::No);
        assert_eq!(listed("badexample.com", "*.example.com"), Listed::No);
        assert_eq!(listed("::1", "::1"), Listed::Exactly);
    }

    #[tokio::test]
    async fn names_under_a_domain_pattern_may_not_lead_inside_the_network() {
        // `localhost` under `*.localhost` resolves to loopback: refused; listed by itself it is allowed.
        let r = check_host("a.localhost", "*.localhost", 21).await;
        assert!(r.is_err_and(
            |e| e.code == ErrorCode::Forbidden || e.code == ErrorCode::TargetUnreachable
        ));
        assert!(check_host("a.localhost", "a.localhost", 21).await.is_ok());
        assert!(check_host("127.0.0.1", "", 21).await.is_err());
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        assert!(!is_internal("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn endpoint_hosts_come_from_the_url() {
        assert_eq!(endpoint_host(""), "s3.amazonaws.com");
        assert_eq!(endpoint_host("http://127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(
            endpoint_host("https://minio.internal/base"),
            "minio.internal"
        );
        assert_eq!(endpoint_host("http://user:pw@evil.com:80/"), "evil.com");
        assert_eq!(endpoint_host("http://[::1]:9000"), "::1");
        assert_eq!(endpoint_host("127.0.0.1:9000"), "127.0.0.1");
    }
}

/// Change where the fleet stores new jobs' files (agent-interaction server compatible).
#[utoipa::path(post, path = "/configure-sharing", tag = "compatible", request_body = SharingRequest,
    responses((status = 200, body = SharingView), (status = 400, body = Problem),
        (status = 422, description = "Bad settings, or the target is unreachable or refuses the credentials",
         body = Problem), (status = 503, body = Problem)))]
pub async fn configure(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<SharingRequest>,
) -> Result<Json<SharingView>, ApiError> {
    caller.require(|s| s.configure_sharing, "configure sharing")?;
    if body.method == SharingMethod::Default {
        state
            .config_bucket
            .delete(SHARING_KEY)
            .await
            .map_err(|e| ApiError::unavailable("resetting the sharing target failed", e))?;
        return Ok(Json(default_view(&state)));
    }
    let method = body.method.as_str();
    let sharing_method = body.method;
    let target = body.into_target(&state)?;
    if let Some(host) = target_host(sharing_method, &target) {
        let port = match sharing_method {
            SharingMethod::Ftp => target.ftp_port,
            _ => 443,
        };
        check_host(host, &state.config.artifacts.sharing_hosts, port).await?;
    }
    let store = ArtifactStore::new(&target, &state.config.artifacts.prefix)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    // A target that cannot be reached would fail every job's upload: refuse it now, while someone is looking.
    store
        .check()
        .await
        .map_err(|e| ApiError::new(ErrorCode::TargetUnreachable, e.to_string()))?;
    let setting = SharingSetting::new(method, target);
    let bytes = to_msgpack(&setting);
    // The target first, then the pointer to it: a record can always resolve the target it names.
    state
        .config_bucket
        .put(setting.target_key(), bytes.clone().into())
        .await
        .map_err(|e| ApiError::unavailable("storing the sharing target failed", e))?;
    state
        .config_bucket
        .put(SHARING_KEY, bytes.into())
        .await
        .map_err(|e| ApiError::unavailable("storing the sharing target failed", e))?;
    tracing::info!(target_id = %setting.id, store = store.name(), "sharing target changed");
    Ok(Json(view(&setting, store.name())))
}

/// Where new jobs' files go now, secrets masked.
#[utoipa::path(get, path = "/configure-sharing", tag = "compatible",
    responses((status = 200, body = SharingView), (status = 503, body = Problem)))]
pub async fn current(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<SharingView>, ApiError> {
    caller.require(|s| s.configure_sharing, "configure sharing")?;
    let entry = state
        .config_bucket
        .get(SHARING_KEY)
        .await
        .map_err(|e| ApiError::unavailable("reading the sharing target failed", e))?;
    let Some(bytes) = entry else {
        return Ok(Json(default_view(&state)));
    };
    let setting: SharingSetting = decode(&bytes, Format::MessagePack)
        .map_err(|e| ApiError::unavailable("the stored sharing target is unreadable", e))?;
    let store = ArtifactStore::new(&setting.target, &state.config.artifacts.prefix)
        .map_err(|e| ApiError::unavailable("the stored sharing target is unusable", e))?;
    Ok(Json(view(&setting, store.name())))
}

fn view(setting: &SharingSetting, location: &str) -> SharingView {
    SharingView {
        method: setting.method.clone(),
        target_id: setting.id.clone(),
        location: location.to_string(),
        settings: relevant(&setting.target.masked()),
        updated_at: Some(setting.updated_at),
    }
}

fn default_view(state: &AppState) -> SharingView {
    let target = state.config.artifacts.default_target().masked();
    SharingView {
        method: "default".into(),
        target_id: fleet_shared::artifacts::targets::DEFAULT.into(),
        location: state.stores.default_store().name().to_string(),
        settings: relevant(&target),
        updated_at: None,
    }
}

/// The settings of the target's own backend only (an FTP target's view lists no S3 fields).
fn relevant(target: &TargetConfig) -> serde_json::Value {
    let all = serde_json::to_value(target).unwrap_or_default();
    let prefix = match target.backend.as_str() {
        "ftp" => "ftp_",
        "s3" => "s3_",
        "local" => "local_",
        _ => "-",
    };
    let kept = all
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == "backend" || k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::Value::Object(kept)
}
