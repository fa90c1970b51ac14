# shellcheck shell=bash
# services.sh, --secure: a CA, certificates and a password per service, made once per directory.
# Sourced by scripts/services.sh, which sets the shared variables and log/die/usage.

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
