#!/usr/bin/env bash
# The Python used by the interop tests: a virtual environment outside the repository with
# Confluent's Kafka client and its Avro serializer from PyPI. Created if missing; prints the
# interpreter's path on stdout.
set -euo pipefail

cache="${FLEETPULSE_CACHE:-$HOME/.cache/fleetpulse}"
venv="$cache/pyenv"
marker="$venv/.fleetpulse-ready"
requirements='confluent-kafka[avro,schemaregistry]==2.16.1'

if [[ ! -f "$marker" ]] || [[ "$(cat "$marker")" != "$requirements" ]]; then
  mkdir -p "$cache"
  echo "python-env: creating $venv with $requirements" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$requirements" >&2
  printf '%s' "$requirements" >"$marker"
fi
printf '%s\n' "$venv/bin/python"
