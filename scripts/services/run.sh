# shellcheck shell=bash
# services.sh, running: the foreground supervisor (run) and the background services of up/down.
# Sourced by scripts/services.sh, which sets the shared variables and log/die/usage.

# ---------------------------------------------------------------------------------------
# run: foreground supervisor

CHILD=""
RUN_SVC=""
RUN_DIR=""
RUN_REMOVE=0
STOPPING=0

stop_child() {
  local pid="$CHILD" i
  [[ -n "$pid" ]] || return 0
  if proc_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_GRACE_SECONDS * 5; i++)); do
      proc_alive "$pid" || break
      sleep 0.2
    done
    if proc_alive "$pid"; then
      log "$RUN_SVC: still running ${STOP_GRACE_SECONDS}s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  CHILD=""
}

remove_pid_files() {
  [[ -n "$RUN_DIR" ]] || return 0
  rm -f "$RUN_DIR/$RUN_SVC.run.pid" "$RUN_DIR/$RUN_SVC.server.pid"
}

on_signal() {
  if ((STOPPING)); then return; fi
  STOPPING=1
  log "$RUN_SVC: got SIG$1, stopping the server"
  stop_child
  remove_pid_files
  # A throwaway instance (tests' shared services) leaves nothing behind once stopped; one that
  # failed to start keeps its log (this path is only taken on a stop signal).
  if ((RUN_REMOVE)); then
    rm -rf "$RUN_DIR"
    log "$RUN_SVC: stopped and removed $RUN_DIR"
  else
    log "$RUN_SVC: stopped"
  fi
  exit 0
}

on_exit() {
  stop_child
  remove_pid_files
}

log_tail() {
  if [[ -f "$SERVER_LOG" ]]; then
    log "last lines of $SERVER_LOG:"
    tail -n 40 "$SERVER_LOG" >&2
  fi
  if [[ "$RUN_SVC" == clickhouse && -s "$RUN_DIR/clickhouse.err.log" ]]; then
    log "last lines of $RUN_DIR/clickhouse.err.log:"
    tail -n 20 "$RUN_DIR/clickhouse.err.log" >&2
  fi
}

cmd_run() {
  local svc="${1:-}" dir=""
  [[ -n "$svc" ]] || usage
  shift
  check_service "$svc"
  while (($#)); do
    case "$1" in
      --dir) dir="${2:-}"; shift 2 || usage ;;
      --dir=*) dir="${1#--dir=}"; shift ;;
      --remove-on-exit) RUN_REMOVE=1; shift ;;
      --secure) SECURE=1; shift ;;
      *) usage ;;
    esac
  done
  [[ -n "$dir" ]] || usage

  trap 'on_signal TERM' TERM
  trap 'on_signal INT' INT
  trap 'on_signal HUP' HUP
  trap on_exit EXIT
  RUN_SVC="$svc"

  install_service "$svc"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  RUN_DIR="$dir"

  local timeout
  case "$svc" in
    kafka) timeout=120 ;;
    *) timeout=30 ;;
  esac
  timeout="${FLEETPULSE_READY_TIMEOUT:-$timeout}"

  # Keep the previous run's log next to the new one; the ready check reads only the new one.
  SERVER_LOG="$dir/$svc.log"
  if [[ -f "$SERVER_LOG" ]]; then mv -f "$SERVER_LOG" "$SERVER_LOG.1"; fi
  "prepare_$svc" "$dir"

  local launcher=()
  # If this script dies without running its trap (SIGKILL), the server still gets SIGTERM.
  local setpriv_help
  setpriv_help="$(setpriv --help 2>/dev/null || true)"
  if [[ "$setpriv_help" == *--pdeathsig* ]]; then
    launcher=(setpriv --pdeathsig TERM --)
  fi
  log "$svc: starting ${SERVER_CMD[0]} (log $SERVER_LOG)"
  "${launcher[@]}" "${SERVER_CMD[@]}" </dev/null >>"$SERVER_LOG" 2>&1 &
  CHILD=$!
  printf '%s\n' "$$" >"$dir/$svc.run.pid"
  printf '%s\n' "$CHILD" >"$dir/$svc.server.pid"

  local start=$SECONDS
  while :; do
    if ! proc_alive "$CHILD"; then
      local rc=0
      wait "$CHILD" || rc=$?
      CHILD=""
      log "$svc: server exited (status $rc) before it was ready"
      log_tail
      exit 1
    fi
    if $READY_CHECK; then break; fi
    if ((SECONDS - start >= timeout)); then
      log "$svc: not ready after ${timeout}s"
      log_tail
      exit 1
    fi
    sleep 0.2
  done
  log "$svc: ready in $((SECONDS - start)) s at $READY_ADDR (server pid $CHILD)"
  printf 'READY %s %s\n' "$svc" "$READY_ADDR"

  local rc=0
  wait "$CHILD" || rc=$?
  # Only reached when the server exits on its own (signals run on_signal, which exits 0).
  CHILD=""
  log "$svc: server exited on its own (status $rc)"
  log_tail
  exit $((rc == 0 ? 1 : rc))
}

# ---------------------------------------------------------------------------------------
# up / down: for humans and the demo

MARKER=".fleetpulse-services"

stop_run_pids() {
  local dir="$1" f pid pids=() i
  for f in "$dir"/*.run.pid; do
    [[ -f "$f" ]] || continue
    pid="$(head -n1 "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    # Only our own run-mode processes (guards against a reused pid).
    if proc_alive "$pid" && [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)" == *"services.sh run"* ]]; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  # run mode gives its server STOP_GRACE_SECONDS before SIGKILL; allow a little more.
  for ((i = 0; i < (STOP_GRACE_SECONDS + 10) * 5; i++)); do
    local left=0
    for pid in "${pids[@]}"; do proc_alive "$pid" && left=1; done
    ((left)) || break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if proc_alive "$pid"; then
      log "run process $pid did not exit: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Servers whose supervisor was killed get SIGTERM through pdeathsig; make sure.
  for f in "$dir"/*.server.pid; do
    [[ -f "$f" ]] || continue
    pid="$(head -n1 "$f")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && proc_alive "$pid"; then
      sleep 2
      if proc_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  done
}

cmd_up() {
  local svcs=() svc dir secure=()
  while (($#)); do
    case "$1" in
      --secure) SECURE=1; secure=(--secure); shift ;;
      *) svcs+=("$1"); shift ;;
    esac
  done
  ((${#svcs[@]})) || svcs=("${ALL_SERVICES[@]}")
  for svc in "${svcs[@]}"; do check_service "$svc"; done
  cmd_install "${svcs[@]}"

  dir="$(mktemp -d "${TMPDIR:-/tmp}/fleetpulse-services.XXXXXX")"
  : >"$dir/$MARKER"
  trap 'stop_run_pids "$dir"; rm -rf "$dir"; exit 1' INT TERM HUP
  if ((SECURE)); then ensure_secure_material "$dir"; fi

  local -A pid_of=()
  for svc in "${svcs[@]}"; do
    log "$svc: starting in the background (log $dir/$svc.log)"
    setsid "$SELF" run "$svc" --dir "$dir" "${secure[@]}" </dev/null >"$dir/$svc.out" 2>"$dir/$svc.err" &
    pid_of[$svc]=$!
  done

  local -A addr_of=()
  local line start=$SECONDS
  for svc in "${svcs[@]}"; do
    while :; do
      line="$(grep -m1 "^READY $svc " "$dir/$svc.out" 2>/dev/null || true)"
      if [[ -n "$line" ]]; then
        addr_of[$svc]="${line##* }"
        break
      fi
      if ! proc_alive "${pid_of[$svc]}" || ((SECONDS - start > 300)); then
        log "$svc: failed to start:"
        tail -n 40 "$dir/$svc.err" >&2 || true
        stop_run_pids "$dir"
        rm -rf "$dir"
        exit 1
      fi
      sleep 0.2
    done
  done
  trap - INT TERM HUP

  printf "export FLEETPULSE_SERVICES_DIR='%s'\n" "$dir"
  if ((SECURE)); then
    # Secrets as files (the way Docker and Kubernetes mount them), never as values here.
    printf "export SERVICES_CA_FILE='%s'\n" "$dir/tls/ca.pem"
    printf "export SERVICES_SECRETS_DIR='%s'\n" "$dir/secrets"
    printf "export SERVICES_USER='%s'\n" "$SECURE_USER"
  fi
  for svc in "${svcs[@]}"; do
    case "$svc" in
      kafka) printf 'export KAFKA_BROKERS=%s\n' "${addr_of[$svc]}" ;;
      clickhouse) printf 'export CLICKHOUSE_URL=%s\n' "${addr_of[$svc]}" ;;
      redis) printf 'export REDIS_URL=%s\n' "${addr_of[$svc]}" ;;
      mosquitto) printf 'export MQTT_URL=%s\n' "${addr_of[$svc]}" ;;
    esac
  done
  printf "# stop with: %s down '%s'\n" "$SELF" "$dir"
}

cmd_down() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || usage
  [[ -d "$dir" ]] || die "no such directory: $dir"
  [[ -f "$dir/$MARKER" ]] || die "$dir was not made by 'services.sh up' (no $MARKER): not touching it"
  stop_run_pids "$dir"
  rm -rf "$dir"
  log "stopped and removed $dir"
}
