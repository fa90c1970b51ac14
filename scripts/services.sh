#!/usr/bin/env bash
# services.sh: install and run the real local services that fleetpulse's tests and demo
# need (Apache Kafka in KRaft mode, ClickHouse, Redis), each as a plain child process
# on free 127.0.0.1 ports under a directory chosen by the caller. Never uses a fixed
# port or a machine-wide service.
#
#   services.sh install [kafka|clickhouse|redis|chromium|build ...]
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
ALL_SERVICES=(kafka clickhouse redis)
# Tried in this order when FLEETPULSE_KAFKA_VERSION is not set: the first that resolves wins.
KAFKA_VERSIONS=(4.1.1 4.1.2 4.1.0 4.0.2 4.0.1 4.0.0)
LOG4J_VERSION=2.24.3
KAFKA_HEAP="${FLEETPULSE_KAFKA_HEAP:-768m}"
STOP_GRACE_SECONDS=20

log() { printf 'services.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: services.sh install [kafka|clickhouse|redis|chromium|build ...]
       services.sh run (kafka|clickhouse|redis) --dir DIR [--remove-on-exit] [--secure]
       services.sh up [--secure] [kafka|clickhouse|redis ...]
       services.sh down DIR
EOF
  exit 2
}

check_service() {
  case "$1" in
    kafka | clickhouse | redis) ;;
    *) log "unknown service: $1"; usage ;;
  esac
}

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

# ---------------------------------------------------------------------------------------
# install

apt_install() {
  local pkg="$1"
  local policy
  policy="$(apt-cache policy "$pkg" 2>/dev/null || true)"
  if [[ ! "$policy" =~ Candidate:\ [^\(] ]]; then
    log "$pkg not known to apt yet: apt-get update"
    if ! as_root apt-get update -q >"$CACHE/apt-update.log" 2>&1; then
      tail -n 20 "$CACHE/apt-update.log" >&2
      die "apt-get update failed (log: $CACHE/apt-update.log)"
    fi
  fi
  log "apt-get install -y $pkg"
  local aptlog="$CACHE/apt-$pkg.log"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$pkg" >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2
    die "apt-get install $pkg failed (log: $aptlog)"
  fi
}

# dpkg does not normally start services here, but if it did, stop the machine-wide one:
# we only ever use our own processes.
stop_system_service() {
  local name="$1"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$name" 2>/dev/null; then
    log "stopping machine-wide $name service started by the install"
    as_root systemctl stop "$name" >&2 || true
    as_root systemctl disable "$name" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1 && [[ -x "/etc/init.d/$name" ]] &&
    service "$name" status >/dev/null 2>&1; then
    log "stopping machine-wide $name service started by the install"
    as_root service "$name" stop >&2 || true
  fi
}

# Debian puts clickhouse-server in /usr/sbin, which a non-root PATH may lack.
clickhouse_cmd() {
  local p
  for p in "$(command -v clickhouse-server || true)" /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
    if [[ -n "$p" && -x "$p" ]]; then
      printf '%s\n' "$p"
      return 0
    fi
  done
  for p in "$(command -v clickhouse || true)" /usr/bin/clickhouse; do
    if [[ -n "$p" && -x "$p" ]]; then
      printf '%s server\n' "$p"
      return 0
    fi
  done
  return 1
}

install_clickhouse() {
  if clickhouse_cmd >/dev/null; then return 0; fi
  apt_install clickhouse-server
  stop_system_service clickhouse-server
  clickhouse_cmd >/dev/null || die "clickhouse-server still missing after apt-get install"
}

install_redis() {
  if command -v redis-server >/dev/null 2>&1; then return 0; fi
  apt_install redis-server
  stop_system_service redis-server
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get install"
}

kafka_candidates() {
  if [[ -n "${FLEETPULSE_KAFKA_VERSION:-}" ]]; then
    printf '%s\n' "$FLEETPULSE_KAFKA_VERSION"
  else
    printf '%s\n' "${KAFKA_VERSIONS[@]}"
  fi
}

# The installed Kafka home (CACHE/kafka-VERSION), or nothing.
kafka_home() {
  local v
  while read -r v; do
    if [[ -f "$CACHE/kafka-$v/.complete" ]]; then
      printf '%s\n' "$CACHE/kafka-$v"
      return 0
    fi
  done < <(kafka_candidates)
  return 1
}

write_kafka_pom() {
  local v="$1" out="$2"
  cat >"$out/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by fleetpulse scripts/services.sh: resolves the Kafka broker's jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fleetpulse.local</groupId>
  <artifactId>kafka-broker-deps</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- the broker: kafka.Kafka and kafka.tools.StorageTool -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$v</version>
    </dependency>
    <!-- console producer/consumer, topic and group commands (without Kafka Connect) -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$v</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <!-- logging: Kafka 4.x logs through slf4j 1.7 to log4j2 -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
        <configuration>
          <outputDirectory>\${project.basedir}/lib.tmp</outputDirectory>
          <includeScope>runtime</includeScope>
        </configuration>
      </plugin>
    </plugins>
  </build>
</project>
EOF
}

install_kafka() {
  if kafka_home >/dev/null; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) not found: needed to fetch Kafka"
  java_bin >/dev/null
  local v home mvnlog
  while read -r v; do
    home="$CACHE/kafka-$v"
    mkdir -p "$home"
    rm -rf "$home/lib.tmp"
    write_kafka_pom "$v" "$home"
    mvnlog="$home/mvn.log"
    log "kafka $v: resolving jars from Maven Central into $home/lib (maven repo $CACHE/m2)"
    if (cd "$home" && mvn -B -q --no-transfer-progress -Dstyle.color=never -Dmaven.repo.local="$CACHE/m2" \
      dependency:copy-dependencies >"$mvnlog" 2>&1); then
      rm -rf "${home:?}/lib"
      mv "$home/lib.tmp" "$home/lib"
      printf 'kafka %s installed %s\n' "$v" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$home/.complete"
      log "kafka $v: installed ($(find "$home/lib" -name '*.jar' | wc -l) jars)"
      return 0
    fi
    log "kafka $v: maven failed (log: $mvnlog):"
    tail -n 15 "$mvnlog" >&2 || true
    rm -rf "$home/lib.tmp"
  done < <(kafka_candidates)
  die "could not resolve any Kafka version ($(kafka_candidates | tr '\n' ' '))"
}

is_installed() {
  case "$1" in
    kafka) kafka_home >/dev/null ;;
    clickhouse) clickhouse_cmd >/dev/null ;;
    redis) command -v redis-server >/dev/null 2>&1 ;;
    chromium) command -v chromium >/dev/null 2>&1 ;;
    build) command -v openssl >/dev/null 2>&1 && pkg-config --exists openssl 2>/dev/null ;;
  esac
}

install_service() {
  local svc="$1"
  mkdir -p "$CACHE"
  # One install at a time (parallel tests may all call `run` on a fresh machine).
  (
    flock 9
    case "$svc" in
      kafka) install_kafka ;;
      clickhouse) install_clickhouse ;;
      redis) install_redis ;;
      chromium) is_installed chromium || apt_install chromium ;;
      # What the build links (OpenSSL for TLS to Kafka, ClickHouse and Redis, found through
      # pkg-config) and the `openssl` tool that makes --secure's certificates.
      build) is_installed build || for pkg in pkg-config libssl-dev openssl; do apt_install "$pkg"; done ;;
    esac
  ) 9>"$CACHE/install.lock"
}

cmd_install() {
  local svcs=("$@") svc start
  ((${#svcs[@]})) || svcs=("${ALL_SERVICES[@]}")
  for svc in "${svcs[@]}"; do [[ "$svc" == chromium || "$svc" == build ]] || check_service "$svc"; done
  for svc in "${svcs[@]}"; do
    if is_installed "$svc"; then
      log "$svc: already installed"
      continue
    fi
    start=$SECONDS
    install_service "$svc"
    log "$svc: installed (took $((SECONDS - start)) s)"
  done
}

# ---------------------------------------------------------------------------------------
# secure mode: a CA, a server and a client certificate, and one password per service

SECURE=0
# The user every secured service knows; its password is DIR/secrets/<service>-password.
SECURE_USER=fleet

# Makes DIR/tls (CA, server certificate for 127.0.0.1 and localhost, client certificate for
# mTLS) and DIR/secrets once; services started in parallel in one DIR share them.
ensure_secure_material() {
  local dir="$1" tls="$1/tls" secrets="$1/secrets"
  mkdir -p "$tls" "$secrets"
  (
    flock 9
    if [[ -f "$tls/.complete" ]]; then exit 0; fi
    command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian package openssl)"
    log "tls: making a CA and certificates in $tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=fleetpulse test CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    local name
    for name in server client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$([[ $name == server ]] && echo localhost || echo $SECURE_USER)" \
        -keyout "$tls/$name.key.pkcs1" -out "$tls/$name.csr" 2>/dev/null
      # PKCS#8 keys: the form Kafka's PEM key store reads.
      openssl pkcs8 -topk8 -nocrypt -in "$tls/$name.key.pkcs1" -out "$tls/$name.key"
      rm -f "$tls/$name.key.pkcs1"
      printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' \
        "$([[ $name == server ]] && echo 'IP:127.0.0.1,DNS:localhost' || echo "DNS:$SECURE_USER")" \
        "$([[ $name == server ]] && echo serverAuth || echo clientAuth)" >"$tls/$name.ext"
      openssl x509 -req -in "$tls/$name.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 30 -extfile "$tls/$name.ext" -out "$tls/$name.pem" 2>/dev/null
      rm -f "$tls/$name.csr" "$tls/$name.ext"
    done
    chmod 600 "$tls"/*.key
    local svc
    for svc in "${ALL_SERVICES[@]}"; do
      [[ -s "$secrets/$svc-password" ]] ||
        (umask 077 && openssl rand -hex 16 | tr -d '\n' >"$secrets/$svc-password")
    done
    : >"$tls/.complete"
  ) 9>"$dir/.secure.lock"
}

secret_of() { cat "$1/secrets/$2-password"; }

# ---------------------------------------------------------------------------------------
# per-service configuration; each sets SERVER_CMD, READY_ADDR and READY_CHECK

SERVER_CMD=()
READY_ADDR=""
READY_CHECK=""
SERVER_LOG=""

prepare_kafka() {
  local dir="$1" home ports p_client p_ctrl kdir data java cluster_id
  home="$(kafka_home)" || die "kafka is not installed"
  java="$(java_bin)"
  kdir="$dir/kafka"
  data="$kdir/data"
  mkdir -p "$data"
  local listeners security=() scram=()
  if ((SECURE)); then
    local p_mtls p_internal password tls="$dir/tls"
    ensure_secure_material "$dir"
    ports="$(service_ports "$dir" kafka 4)"
    read -r p_client p_ctrl p_mtls p_internal <<<"$ports"
    password="$(secret_of "$dir" kafka)"
    # Clients use SASL_SSL (READY address) or mTLS (kafka/mtls.address); the broker talks to
    # itself over a loopback PLAINTEXT listener no client is told about.
    listeners="SASL_SSL://127.0.0.1:$p_client,SSL://127.0.0.1:$p_mtls,INTERNAL://127.0.0.1:$p_internal"
    printf '127.0.0.1:%s\n' "$p_mtls" >"$kdir/mtls.address"
    cat "$tls/server.key" "$tls/server.pem" >"$kdir/keystore.pem"
    chmod 600 "$kdir/keystore.pem"
    security=(
      "advertised.listeners=$listeners"
      "listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
      "inter.broker.listener.name=INTERNAL"
      "ssl.keystore.type=PEM"
      "ssl.keystore.location=$kdir/keystore.pem"
      "ssl.truststore.type=PEM"
      "ssl.truststore.location=$tls/ca.pem"
      "listener.name.ssl.ssl.client.auth=required"
      "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER"
      "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SECURE_USER=\"$password\";"
      "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      # Unsecured JWTs (signature "none"), Kafka's own test validator: enough to show that a
      # client sends the token it is given; a real deployment validates against its IdP.
      "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=\"$SECURE_USER\";"
    )
    scram=(--add-scram "SCRAM-SHA-256=[name=$SECURE_USER,password=$password]"
      --add-scram "SCRAM-SHA-512=[name=$SECURE_USER,password=$password]")
  else
    ports="$(service_ports "$dir" kafka 2)"
    read -r p_client p_ctrl <<<"$ports"
    listeners="PLAINTEXT://127.0.0.1:$p_client"
    security=(
      "advertised.listeners=$listeners"
      "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
      "inter.broker.listener.name=PLAINTEXT"
    )
  fi

  {
    cat <<EOF
# Generated by fleetpulse scripts/services.sh: one-node KRaft broker+controller for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$p_ctrl
listeners=$listeners,CONTROLLER://127.0.0.1:$p_ctrl
controller.listener.names=CONTROLLER
EOF
    printf '%s\n' "${security[@]}"
    cat <<EOF
log.dirs=$data
metadata.log.dir=$data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
log.retention.check.interval.ms=60000
# Tests and the demo replay fleets stamped in the past (2023): with the default 7-day
# retention by record timestamp the broker deletes them within a retention check.
log.retention.ms=-1
# After a kill -9 the restarted broker cannot register until the controller expires the
# old registration (DUPLICATE_BROKER_REGISTRATION): the default 9 s session made a
# restart take about 15 s.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
EOF
  } >"$kdir/server.properties"
  chmod 600 "$kdir/server.properties"

  cat >"$kdir/log4j2.properties" <<EOF
# Generated by fleetpulse scripts/services.sh: broker log to $SERVER_LOG only.
status = warn
# Kafka's own shutdown hook logs the clean shutdown; log4j's hook would cut it off.
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $SERVER_LOG
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF

  local jopts=(-Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$kdir/log4j2.properties"
    -Dkafka.logs.dir="$dir")
  if [[ -n "${FLEETPULSE_KAFKA_JAVA_OPTS:-}" ]]; then
    local extra
    read -r -a extra <<<"$FLEETPULSE_KAFKA_JAVA_OPTS"
    jopts+=("${extra[@]}")
  fi

  if [[ ! -f "$data/meta.properties" ]]; then
    # An id starting with "-" reads as an option to kafka-storage (one start in 64 failed so);
    # Kafka's own generator avoids those too.
    cluster_id="$("$(python_bin)" -c 'import base64,uuid
while (s := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(s)' 2>/dev/null ||
      "$java" -cp "$home/lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null)"
    log "kafka: formatting $data (cluster id $cluster_id)"
    if ! "$java" -Xmx256m -Dlog4j2.configurationFile="$kdir/log4j2.properties" -cp "$home/lib/*" \
      kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$kdir/server.properties" \
      "${scram[@]}" >>"$SERVER_LOG" 2>&1; then
      tail -n 30 "$SERVER_LOG" >&2
      die "kafka: storage format failed"
    fi
  else
    log "kafka: reusing formatted storage in $data"
  fi

  SERVER_CMD=("$java" "${jopts[@]}" -cp "$home/lib/*" kafka.Kafka "$kdir/server.properties")
  READY_ADDR="127.0.0.1:$p_client"
  READY_CHECK="kafka_ready $p_client"
}

kafka_ready() {
  grep -q 'Kafka Server started' "$SERVER_LOG" 2>/dev/null && port_open "$1"
}

prepare_clickhouse() {
  local dir="$1" ports p_http p_tcp cdir listen user password="<password></password>" tls=""
  ports="$(service_ports "$dir" clickhouse 2)"
  read -r p_http p_tcp <<<"$ports"
  cdir="$dir/clickhouse"
  mkdir -p "$cdir/data" "$cdir/tmp" "$cdir/user_files" "$cdir/format_schemas"
  listen="<http_port>$p_http</http_port>"
  user=default
  if ((SECURE)); then
    ensure_secure_material "$dir"
    tls="$dir/tls"
    user="$SECURE_USER"
    password="<password_sha256_hex>$(printf '%s' "$(secret_of "$dir" clickhouse)" | sha256sum | cut -d' ' -f1)</password_sha256_hex>"
    # HTTPS only; the native port (tests' own tools) stays on loopback behind the password.
    listen="<https_port>$p_http</https_port>
    <openSSL>
        <server>
            <certificateFile>$tls/server.pem</certificateFile>
            <privateKeyFile>$tls/server.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>"
  fi
  cat >"$cdir/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by fleetpulse scripts/services.sh: ClickHouse for tests, users in this file. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$SERVER_LOG</log>
        <errorlog>$dir/clickhouse.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    $listen
    <tcp_port>$p_tcp</tcp_port>
    <max_connections>512</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$cdir/data/</path>
    <tmp_path>$cdir/tmp/</tmp_path>
    <user_files_path>$cdir/user_files/</user_files_path>
    <format_schema_path>$cdir/format_schemas/</format_schema_path>
    <users_config>$cdir/config.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <$user>
            $password
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </$user>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
  local cmd
  cmd="$(clickhouse_cmd)" || die "clickhouse is not installed"
  read -r -a SERVER_CMD <<<"$cmd"
  SERVER_CMD+=("--config-file=$cdir/config.xml")
  if ((SECURE)); then
    chmod 600 "$cdir/config.xml"
    READY_ADDR="https://127.0.0.1:$p_http"
    READY_CHECK="clickhouse_ready $p_http $tls/ca.pem"
  else
    READY_ADDR="http://127.0.0.1:$p_http"
    READY_CHECK="clickhouse_ready $p_http"
  fi
}

# clickhouse_ready PORT [CA]: with CA, over HTTPS.
clickhouse_ready() {
  local body
  if [[ -n "${2:-}" ]]; then
    body="$(curl -s --max-time 2 --cacert "$2" "https://127.0.0.1:$1/ping" 2>/dev/null)" || return 1
  elif command -v curl >/dev/null 2>&1; then
    body="$(curl -s --max-time 2 "http://127.0.0.1:$1/ping" 2>/dev/null)" || return 1
  else
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    body="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "GET /ping HTTP/1.0\r\n\r\n" >&3; cat <&3' _ "$1" 2>/dev/null)" || return 1
  fi
  [[ "$body" == *"Ok."* ]]
}

prepare_redis() {
  local dir="$1" port
  port="$(service_ports "$dir" redis 1)"
  mkdir -p "$dir/redis"
  SERVER_CMD=(redis-server --bind 127.0.0.1 --save '' --appendonly no
    --dir "$dir/redis" --daemonize no)
  if ((SECURE)); then
    local tls="$dir/tls"
    ensure_secure_material "$dir"
    # TLS only, and no default user: every client names the ACL user and its password. The
    # ACL line goes through a file so the password is not on the command line.
    printf 'user default off\nuser %s on >%s ~* &* +@all\n' "$SECURE_USER" \
      "$(secret_of "$dir" redis)" >"$dir/redis/users.acl"
    chmod 600 "$dir/redis/users.acl"
    SERVER_CMD+=(--port 0 --tls-port "$port" --tls-cert-file "$tls/server.pem"
      --tls-key-file "$tls/server.key" --tls-ca-cert-file "$tls/ca.pem" --tls-auth-clients optional
      --aclfile "$dir/redis/users.acl")
    READY_ADDR="rediss://127.0.0.1:$port"
    READY_CHECK="redis_ready $port $dir"
  else
    SERVER_CMD+=(--port "$port")
    READY_ADDR="redis://127.0.0.1:$port"
    READY_CHECK="redis_ready $port"
  fi
}

# redis_ready PORT [DIR]: with DIR, over TLS as the secure user.
redis_ready() {
  local reply
  if [[ -n "${2:-}" ]]; then
    reply="$(REDISCLI_AUTH="$(secret_of "$2" redis)" timeout 2 redis-cli -h 127.0.0.1 -p "$1" \
      --tls --cacert "$2/tls/ca.pem" --user "$SECURE_USER" ping 2>/dev/null)" || return 1
  elif command -v redis-cli >/dev/null 2>&1; then
    reply="$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" || return 1
  else
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    reply="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "PING\r\n" >&3; head -c 7 <&3' _ "$1" 2>/dev/null)" || return 1
  fi
  [[ "$reply" == *PONG* ]]
}

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
