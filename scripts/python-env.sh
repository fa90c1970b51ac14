#!/usr/bin/env bash
# A Python virtual environment outside the repository, created if missing; prints the
# interpreter's path on stdout.
#
#   python-env.sh          the interop tests': Confluent's Kafka client and Avro serializer
#   python-env.sh bench    `fleetpulse bench pipeline`'s: DuckDB, to time beside a file replay
set -euo pipefail

cache="${FLEETPULSE_CACHE:-$HOME/.cache/fleetpulse}"
case "${1:-interop}" in
  interop)
    venv="$cache/pyenv"
    requirements='confluent-kafka[avro,schemaregistry]==2.16.1'
    ;;
  bench)
    venv="$cache/pyenv-bench"
    requirements='duckdb==2.0.1'
    ;;
  *)
    echo "python-env: unknown environment $1 (interop or bench)" >&2
    exit 2
    ;;
esac
marker="$venv/.fleetpulse-ready"

if [[ ! -f "$marker" ]] || [[ "$(cat "$marker")" != "$requirements" ]]; then
  mkdir -p "$cache"
  echo "python-env: creating $venv with $requirements" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$requirements" >&2
  printf '%s' "$requirements" >"$marker"
fi
printf '%s\n' "$venv/bin/python"
