#!/usr/bin/env bash
# Builds the release `fleet` binary into DIR (default: dist/). The container images run exactly this, and CI runs
# it too, so an image build step is exercised without a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
cargo build --release --locked --bin fleet
mkdir -p "$out"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/fleet" "$out/fleet"
"$out/fleet" --version
