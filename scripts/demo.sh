#!/usr/bin/env bash
# The fleetpulse demo, on a fresh machine: installs and starts Apache Kafka on a free port,
# streams a synthetic fleet of 2,000 devices into it (with the faults real fleets have), and
# shows the telemetry flowing, decoded, until Ctrl-C (or for DEMO_SECONDS seconds).
#
# The pipeline, the ClickHouse sink and the live dashboard join the demo as they are built.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${FLEETPULSE_CACHE:-$HOME/.cache/fleetpulse}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

echo "demo: building fleetpulse (the first build takes a few minutes)" >&2
cargo build --locked --release -p fleetpulse >&2
bin="$CARGO_TARGET_DIR/release/fleetpulse"

echo "demo: starting Apache Kafka" >&2
eval "$(scripts/services.sh up kafka)"
generator_pid=""
cleanup() {
  [[ -n "$generator_pid" ]] && kill "$generator_pid" 2>/dev/null && wait "$generator_pid" 2>/dev/null
  scripts/services.sh down "$FLEETPULSE_SERVICES_DIR" >&2 || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

export FLEETPULSE_KAFKA__BROKERS="$KAFKA_BROKERS"
"$bin" generate --devices 2000 --tenants 4 --events 0 --rate 2000 --no-progress \
  --set generate.malformed_fraction=0.01 >/dev/null &
generator_pid=$!

cat >&2 <<MSG
demo: Kafka at $KAFKA_BROKERS; 2,000 devices send 2,000 readings/s to topic "telemetry".
demo: below, each reading as fleetpulse decodes it (malformed ones show their dead-letter reason).
demo: look at it yourself with: FLEETPULSE_KAFKA__BROKERS=$KAFKA_BROKERS $bin tail
MSG
tail_args=(tail --from-beginning)
if [[ -n "${DEMO_SECONDS:-}" ]]; then
  timeout "$DEMO_SECONDS" "$bin" "${tail_args[@]}" || true
else
  "$bin" "${tail_args[@]}"
fi
