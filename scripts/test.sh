#!/usr/bin/env bash
# Every check and test of fleetpulse, on a fresh machine or a warm one: installs what is missing
# (Rust's rustfmt and clippy, Apache Kafka from Maven Central, clickhouse-server and chromium from
# Debian, the Python interop environment from PyPI), then runs formatting, lints, and all unit, property and end-to-end tests. Tests
# start their own services on free ports; nothing needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${FLEETPULSE_CACHE:-$HOME/.cache/fleetpulse}"
# The build lives outside the clone so a fresh clone on a warm machine reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*" >&2; }

step "toolchain"
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done

step "services and interop dependencies"
scripts/services.sh install build
scripts/services.sh install kafka
scripts/services.sh install clickhouse
scripts/services.sh install redis
scripts/services.sh install mosquitto
scripts/services.sh install chromium
scripts/python-env.sh >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked
