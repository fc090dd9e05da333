#!/usr/bin/env bash
# Development-only TLS material and SASL password for the SASL_SSL listener of infra/docker-compose.yml.
#   infra/make_dev_certs.sh [DIR]        (default DIR: infra/dev-certs, git-ignored)
# Writes: ca.pem (the CA genrec's clients trust: kafka.ssl_cafile), kafkaN.pem (each broker's PKCS#8 key
# followed by its certificate, for Kafka's PEM keystore; SANs kafkaN, localhost, 127.0.0.1) and kafka.env
# (KAFKA_SASL_PASSWORD, random; read by `docker compose --env-file` and by genrec's clients).
# A real deployment uses certificates from its own CA and a secret store, not this script.
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")" && pwd)/dev-certs}"
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 825 -subj "/CN=genrec-dev-ca" 2>/dev/null
  chmod 600 ca.key
fi
for b in kafka1 kafka2 kafka3; do
  openssl req -newkey rsa:2048 -nodes -keyout "$b.key" -out "$b.csr" -subj "/CN=$b" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\n' "$b" > "$b.ext"
  openssl x509 -req -in "$b.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$b.crt" -days 825 \
    -extfile "$b.ext" 2>/dev/null
  cat "$b.key" "$b.crt" > "$b.pem"
  chmod 644 "$b.pem"   # read by the broker's user inside the container (dev only)
  rm -f "$b.csr" "$b.ext" "$b.key" "$b.crt"
done
if [[ ! -f kafka.env ]]; then
  (umask 077 && printf 'KAFKA_SASL_PASSWORD=%s\n' "$(openssl rand -hex 24)" > kafka.env)
fi
echo "dev certificates and kafka.env in $out"
