#!/usr/bin/env bash
# The fleetpulse demo, on a fresh machine: builds fleetpulse, installs and starts ClickHouse
# when it can (Debian's clickhouse-server), and runs `fleetpulse demo`: an embedded Kafka
# broker, a live fleet of 3,000 devices with failures and devices going silent, the pipeline,
# the ClickHouse sink, and the WebSocket bridge with its dashboard at the printed address; and,
# with Debian's Mosquitto (installed like ClickHouse), a Zigbee home publishing over MQTT that
# the MQTT gateway bridges into Kafka.
# Ctrl-C stops everything (or it stops by itself after DEMO_SECONDS seconds).
#
# DEMO_CLICKHOUSE=0 leaves ClickHouse out, DEMO_MQTT=0 Mosquitto; extra arguments go to `fleetpulse demo`
# (for example --brokers HOST:PORT for a real Kafka, --devices N, --listen ADDR).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${FLEETPULSE_CACHE:-$HOME/.cache/fleetpulse}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

scripts/services.sh install build >&2
echo "demo: building fleetpulse (the first build takes a few minutes)" >&2
cargo build --locked --release -p fleetpulse >&2
bin="$CARGO_TARGET_DIR/release/fleetpulse"

args=("$@")
services_dirs=()
cleanup() {
  local dir
  for dir in "${services_dirs[@]}"; do scripts/services.sh down "$dir" >&2 || true; done
}
trap cleanup EXIT
if [[ "${DEMO_CLICKHOUSE:-1}" != 0 ]]; then
  if scripts/services.sh install clickhouse >&2 && eval "$(scripts/services.sh up clickhouse)"; then
    services_dirs+=("$FLEETPULSE_SERVICES_DIR")
    args+=(--clickhouse-url "$CLICKHOUSE_URL")
  else
    echo "demo: no ClickHouse here; the demo runs without the sink" >&2
  fi
fi
if [[ "${DEMO_MQTT:-1}" != 0 ]]; then
  if scripts/services.sh install mosquitto >&2 && eval "$(scripts/services.sh up mosquitto)"; then
    services_dirs+=("$FLEETPULSE_SERVICES_DIR")
    args+=(--mqtt-url "$MQTT_URL")
  else
    echo "demo: no Mosquitto here; the demo runs without its MQTT home" >&2
  fi
fi

# Quiet logs: the demo prints what to look at; RUST_LOG=info shows everything.
export RUST_LOG="${RUST_LOG:-warn}"
if [[ -n "${DEMO_SECONDS:-}" ]]; then
  timeout --signal=INT "$DEMO_SECONDS" "$bin" demo "${args[@]}" || [[ $? == 124 ]]
else
  "$bin" demo "${args[@]}"
fi
