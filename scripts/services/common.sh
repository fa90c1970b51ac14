# shellcheck shell=bash
# services.sh, small helpers: java, root, python, free ports, process checks, a service's ports.
# Sourced by scripts/services.sh, which sets the shared variables and log/die/usage.

# ---------------------------------------------------------------------------------------
# small helpers

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  else
    command -v java || die "java not found (install a JDK 17+ or set JAVA_HOME)"
  fi
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# The system python3 starts faster than a pyenv shim; any python3 will do.
python_bin() {
  if [[ -x /usr/bin/python3 ]]; then
    printf '%s\n' /usr/bin/python3
  else
    command -v python3 || true
  fi
}

# Print N distinct free TCP ports on 127.0.0.1, space separated.
free_ports() {
  local n="$1" py
  py="$(python_bin)"
  if [[ -n "$py" ]]; then
    "$py" - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
    return
  fi
  # Fallback without python3: random high ports that nothing accepts on.
  local ports=() p
  while ((${#ports[@]} < n)); do
    p=$((20000 + RANDOM % 30000))
    if ! port_open "$p" && [[ " ${ports[*]} " != *" $p "* ]]; then
      ports+=("$p")
    fi
  done
  printf '%s\n' "${ports[*]}"
}

port_open() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Alive and not a zombie (a zombie still answers kill -0 until it is reaped).
proc_alive() {
  local pid="$1" state
  [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# Read the ports stored for a service in DIR, or pick and store new ones.
service_ports() {
  local dir="$1" svc="$2" n="$3" file="$1/$2.ports" ports stored
  if [[ -s "$file" ]]; then
    ports="$(head -n1 "$file")"
    if [[ "$ports" =~ ^[0-9]+( [0-9]+)*$ ]]; then
      read -r -a stored <<<"$ports"
      # Secure mode has more listeners: a DIR keeps the mode it was first started in.
      ((${#stored[@]} == n)) ||
        die "$svc: $dir was first started $( ((${#stored[@]} < n)) && echo without || echo with) --secure; start it the same way, or use a new DIR"
      log "$svc: reusing ports $ports from $file"
      printf '%s\n' "$ports"
      return
    fi
  fi
  ports="$(free_ports "$n")"
  printf '%s\n' "$ports" >"$file"
  printf '%s\n' "$ports"
}
