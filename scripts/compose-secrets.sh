#!/usr/bin/env bash
# compose-secrets.sh: the one-off step before `docker compose -f docker-compose.secure.yml up`.
# Makes, under DIR (default: secrets/ beside the compose file), a private CA, one server
# certificate for every service name of the stack, the Kafka broker's key store and login file,
# and a random password or token for each service, in the forms each image reads:
#
#   ca.pem ca.key                  the CA (clients trust ca.pem; ca.key signs, keep it offline)
#   server.pem server.key          kafka, registry, clickhouse, redis, bridge, localhost
#   kafka/kafka.p12                the broker's PKCS#12 key store (apache/kafka reads it from
#   kafka/keystore-password        /etc/kafka/secrets), its password, and the broker's JAAS file
#   kafka/jaas.conf                with the SASL PLAIN user
#   kafka-password                 that user's password, for the fleetpulse services
#   clickhouse-password clickhouse-users.xml
#   redis-password redis-users.acl
#   registry-token bridge-jwt-secret
#
# Files that exist are kept, so running it again only adds what is missing; delete DIR to start
# over. DIR is readable by its owner only; the files in it are world-readable, because each
# container reads them through a bind mount as its own user (redis, clickhouse, appuser,
# fleetpulse). Needs openssl (Debian package openssl).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$here/secrets}"
user="${COMPOSE_SECRETS_USER:-fleetpulse}"
# The names the services reach each other by in docker-compose.secure.yml, and the host's.
names="DNS:kafka,DNS:registry,DNS:clickhouse,DNS:redis,DNS:bridge,DNS:localhost,IP:127.0.0.1"

command -v openssl >/dev/null 2>&1 || { echo "compose-secrets.sh: openssl not found (Debian package openssl)" >&2; exit 1; }
mkdir -p "$dir/kafka"
chmod 700 "$dir"
cd "$dir"
umask 022
made() { printf 'compose-secrets.sh: made %s/%s\n' "$dir" "$1" >&2; }
random() { openssl rand -hex "$1" | tr -d '\n'; }
sha256() { printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }

if [[ ! -s ca.pem ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=fleetpulse compose CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
  chmod 600 ca.key
  made ca.pem
fi
if [[ ! -s server.pem ]]; then
  openssl req -newkey rsa:2048 -nodes -subj "/CN=fleetpulse" -keyout server.key.pkcs1 \
    -out server.csr 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in server.key.pkcs1 -out server.key
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names" >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem 2>/dev/null
  rm -f server.key.pkcs1 server.csr server.ext ca.srl
  chmod 644 server.key
  made server.pem
fi
for secret in kafka-password clickhouse-password redis-password registry-token bridge-jwt-secret; do
  if [[ ! -s $secret ]]; then
    # 32 bytes: the bridge wants 256 bits in its token secret.
    random 32 >"$secret"
    made "$secret"
  fi
done
if [[ ! -s kafka/kafka.p12 ]]; then
  random 16 >kafka/keystore-password
  openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name kafka \
    -passout file:kafka/keystore-password -out kafka/kafka.p12
  chmod 644 kafka/kafka.p12
  made kafka/kafka.p12
fi
if [[ ! -s kafka/jaas.conf ]]; then
  cat >kafka/jaas.conf <<EOF
KafkaServer {
  org.apache.kafka.common.security.plain.PlainLoginModule required
  user_$user="$(cat kafka-password)";
};
EOF
  made kafka/jaas.conf
fi
if [[ ! -s clickhouse-users.xml ]]; then
  cat >clickhouse-users.xml <<EOF
<clickhouse>
  <users>
    <default remove="remove"/>
    <$user>
      <password_sha256_hex>$(sha256 "$(cat clickhouse-password)")</password_sha256_hex>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </$user>
  </users>
</clickhouse>
EOF
  made clickhouse-users.xml
fi
if [[ ! -s redis-users.acl ]]; then
  printf 'user default off\nuser %s on #%s ~* &* +@all\n' "$user" \
    "$(sha256 "$(cat redis-password)")" >redis-users.acl
  made redis-users.acl
fi
