//! The deployment files agree with the code they deploy: the systemd units run the right commands, give the worker
//! more time to stop than its own shutdown grace, and the install script is valid shell.

use std::collections::HashMap;
use std::path::Path;

/// `[Section] Key=Value` pairs of a systemd unit (later keys of the same name win, as for most settings).
fn unit(path: &Path) -> HashMap<(String, String), String> {
    let text = std::fs::read_to_string(path).expect("unit file");
    let mut section = String::new();
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=Value");
        out.insert((section.clone(), key.to_string()), value.to_string());
    }
    out
}

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn systemd_units_run_the_fleet_roles_and_let_workers_hand_jobs_back() {
    let defaults = fleet_shared::config::Config::load(&Default::default()).unwrap();
    for role in ["gateway", "worker"] {
        let u = unit(&deploy().join(format!("systemd/fleet-{role}.service")));
        let get = |s: &str, k: &str| {
            u.get(&(s.to_string(), k.to_string()))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            get("Service", "ExecStart"),
            format!("/usr/local/bin/fleet {role} --config /etc/fleet/fleet.toml")
        );
        assert_eq!(get("Service", "User"), "fleet");
        assert_eq!(get("Service", "KillSignal"), "SIGTERM");
        assert_eq!(get("Install", "WantedBy"), "multi-user.target");
        assert!(get("Service", "EnvironmentFile").ends_with(&format!("/etc/fleet/{role}.env")));
        if role == "worker" {
            // systemd must not SIGKILL the worker before its own grace period lets jobs finish or be handed back.
            let stop: f64 = get("Service", "TimeoutStopSec").parse().unwrap();
            assert!(stop > defaults.worker.shutdown_grace_secs + defaults.worker.kill_grace_secs);
            // Only the worker gets SIGTERM; it ends its agents' process groups itself.
            assert_eq!(get("Service", "KillMode"), "mixed");
        }
    }
}

#[test]
fn the_install_script_is_valid_shell_and_refuses_unknown_roles() {
    let script = deploy().join("systemd/install.sh");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success());
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("database")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role: database"));
}
