#!/usr/bin/env bash
# Installs fleet as systemd services on this machine (run as root from a checkout, after `cargo build --release`):
#   deploy/systemd/install.sh [gateway] [worker]      (both when none is named)
# Creates the `fleet` user, /etc/fleet (config, env files for secrets) and /var/lib/fleet (workspaces, artifacts),
# installs target/release/fleet as /usr/local/bin/fleet and enables the units. Safe to run again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(gateway worker)
for role in "${roles[@]}"; do
  case "$role" in gateway|worker) ;; *) echo "unknown role: $role (gateway or worker)" >&2; exit 2 ;; esac
done
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$top/target/release/fleet" ] || { echo "build first: cargo build --release" >&2; exit 1; }

id fleet >/dev/null 2>&1 || useradd --system --home-dir /var/lib/fleet --shell /usr/sbin/nologin fleet
install -d -o fleet -g fleet -m 0750 /var/lib/fleet /var/lib/fleet/work /var/lib/fleet/artifacts
install -d -o root -g fleet -m 0750 /etc/fleet
install -o root -g root -m 0755 "$top/target/release/fleet" /usr/local/bin/fleet
if [ ! -f /etc/fleet/fleet.toml ]; then
  cat > /etc/fleet/fleet.toml <<'TOML'
# fleet configuration; every key and its default: shared/src/defaults.toml in the source.
[nats]
url = "nats://127.0.0.1:4222"

[http]
addr = "127.0.0.1:8080"

[worker]
work_dir = "/var/lib/fleet/work"
# /health, /ready and /metrics of the worker (the gateway serves them on its own address).
http_addr = "127.0.0.1:9090"

[artifacts]
local_dir = "/var/lib/fleet/artifacts"
TOML
  chown root:fleet /etc/fleet/fleet.toml && chmod 0640 /etc/fleet/fleet.toml
fi
for role in "${roles[@]}"; do
  env_file="/etc/fleet/$role.env"
  [ -f "$env_file" ] || install -o root -g fleet -m 0640 /dev/null "$env_file"
  install -o root -g root -m 0644 "$here/fleet-$role.service" "/etc/systemd/system/fleet-$role.service"
done
systemctl daemon-reload
for role in "${roles[@]}"; do
  systemctl enable --now "fleet-$role.service"
  echo "fleet-$role: $(systemctl is-active "fleet-$role.service")"
done
