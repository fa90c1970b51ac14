#!/usr/bin/env bash
# services.sh: install and run the real local services that fleetpulse's tests and demo
# need (Apache Kafka in KRaft mode, ClickHouse, Redis, the Mosquitto MQTT broker), each as a plain child process
# on free 127.0.0.1 ports under a directory chosen by the caller. Never uses a fixed
# port or a machine-wide service.
#
#   services.sh install [kafka|clickhouse|redis|mosquitto|chromium|build ...]
#                                                       install what is missing (no args = the
#                                                       three services; chromium, Debian's, is
#                                                       the browser the dashboard tests drive;
#                                                       build: pkg-config, libssl-dev, openssl)
#   services.sh run SERVICE --dir DIR [--remove-on-exit] [--secure]
#                                                       foreground: start, print one line
#                                                       "READY <service> <address>" on stdout,
#                                                       stop the server on SIGTERM/SIGINT
#   services.sh up [--secure] [SERVICE ...]             start in the background (no args = all),
#                                                       print shell `export` lines
#
# --secure: TLS with a CA made under DIR/tls and a password user for every service (Kafka:
# SASL_SSL with PLAIN and SCRAM, and an mTLS listener; Redis: TLS and an ACL user; ClickHouse:
# a password user). Passwords are in DIR/secrets. See docs/services.md.
#   services.sh down DIR                                stop what `up` started in DIR, remove DIR
#
# Only READY lines (run) and export lines (up) go to stdout; everything else to stderr.
# Environment: FLEETPULSE_CACHE (default ~/.cache/fleetpulse), FLEETPULSE_KAFKA_VERSION,
# FLEETPULSE_KAFKA_HEAP (default 768m), FLEETPULSE_KAFKA_JAVA_OPTS, FLEETPULSE_READY_TIMEOUT
# (seconds; default kafka 120, others 30), JAVA_HOME. See docs/services.md.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
CACHE="${FLEETPULSE_CACHE:-${HOME:-/root}/.cache/fleetpulse}"
ALL_SERVICES=(kafka clickhouse redis mosquitto)
# Tried in this order when FLEETPULSE_KAFKA_VERSION is not set: the first that resolves wins.
KAFKA_VERSIONS=(4.1.1 4.1.2 4.1.0 4.0.2 4.0.1 4.0.0)
LOG4J_VERSION=2.24.3
KAFKA_HEAP="${FLEETPULSE_KAFKA_HEAP:-768m}"
STOP_GRACE_SECONDS=20

log() { printf 'services.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: services.sh install [kafka|clickhouse|redis|mosquitto|chromium|build ...]
       services.sh run (kafka|clickhouse|redis|mosquitto) --dir DIR [--remove-on-exit] [--secure]
       services.sh up [--secure] [kafka|clickhouse|redis|mosquitto ...]
       services.sh down DIR
EOF
  exit 2
}

check_service() {
  case "$1" in
    kafka | clickhouse | redis | mosquitto) ;;
    *) log "unknown service: $1"; usage ;;
  esac
}

# The parts, sourced in order: each is one idea; this file keeps the usage, the shared
# variables and the dispatch.
PARTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services"
for part in common install secure servers run; do
  # shellcheck source=/dev/null
  source "$PARTS/$part.sh"
done

main() {
  local cmd="${1:-}"
  [[ -n "$cmd" ]] || usage
  shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    run) cmd_run "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
