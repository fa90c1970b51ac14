#!/usr/bin/env bash
# The fleetpulse demo, on a fresh machine: installs and starts Apache Kafka on a free port,
# streams a synthetic fleet of 2,000 devices into it (with the faults real fleets have), runs
# the pipeline on it, and shows the status changes and anomalies it derives, decoded, until
# Ctrl-C (or for DEMO_SECONDS seconds).
#
# The ClickHouse sink and the live dashboard join the demo as they are built.
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
pipeline_pid=""
cleanup() {
  [[ -n "$generator_pid" ]] && kill "$generator_pid" 2>/dev/null && wait "$generator_pid" 2>/dev/null
  [[ -n "$pipeline_pid" ]] && kill "$pipeline_pid" 2>/dev/null && wait "$pipeline_pid" 2>/dev/null
  scripts/services.sh down "$FLEETPULSE_SERVICES_DIR" >&2 || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

export FLEETPULSE_KAFKA__BROKERS="$KAFKA_BROKERS"
"$bin" generate --devices 2000 --tenants 4 --events 0 --rate 2000 --no-progress \
  --set generate.malformed_fraction=0.01 >/dev/null &
generator_pid=$!
# The live fleet is stamped with the wall clock; a silent device goes offline after 60 s.
"$bin" pipeline --listen 127.0.0.1:0 >/dev/null 2>"$FLEETPULSE_SERVICES_DIR/pipeline.log" &
pipeline_pid=$!

cat >&2 <<MSG
demo: Kafka at $KAFKA_BROKERS; 2,000 devices send 2,000 readings/s to topic "telemetry";
demo: fleetpulse pipeline derives aggregates, anomalies and status changes from them.
demo: below, the anomalies as they fire and resolve (the first ones need a minute of data).
demo: look around yourself, for example:
demo:   FLEETPULSE_KAFKA__BROKERS=$KAFKA_BROKERS $bin tail --topic device-aggregates
demo:   FLEETPULSE_KAFKA__BROKERS=$KAFKA_BROKERS $bin tail --topic device-status
demo:   FLEETPULSE_KAFKA__BROKERS=$KAFKA_BROKERS $bin tail --topic telemetry-dlq
MSG
tail_args=(tail --from-beginning --topic device-anomalies)
if [[ -n "${DEMO_SECONDS:-}" ]]; then
  timeout "$DEMO_SECONDS" "$bin" "${tail_args[@]}" || true
else
  "$bin" "${tail_args[@]}"
fi
