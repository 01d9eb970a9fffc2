#!/usr/bin/env bash
# groupmail-mkcerts.sh DIR: a throw-away PKI for client tests against a stub
# server: DIR/ca.pem (+ca.key), DIR/server.pem/.key (SAN IP:127.0.0.1,
# DNS:localhost), DIR/alice.pem/.key (a client certificate, CN and
# rfc822Name alice@example.org), DIR/other-ca.pem (an unrelated CA),
# DIR/server-pub.pem (the server public key, for pinning). RSA-2048.
set -euo pipefail
d=$1
umask 077
mkdir -p "$d"
cd "$d"
q() { "$@" >/dev/null 2>&1 || { echo "mkcerts: failed: $*" >&2; exit 1; }; }
q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
q openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=other CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
mk() { # name subject ext
  q openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
  printf '%s\n' "$3" > "$1.ext"
  q openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext"
  rm -f "$1.csr" "$1.ext"
}
mk server "/CN=localhost" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
mk alice "/CN=alice@example.org" "subjectAltName=email:alice@example.org
extendedKeyUsage=clientAuth,emailProtection
keyUsage=critical,digitalSignature,keyEncipherment"
q openssl x509 -in server.pem -pubkey -noout -out server-pub.pem
chmod 0644 ./*.pem
