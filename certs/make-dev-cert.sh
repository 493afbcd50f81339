#!/usr/bin/env bash
# Make a development CA and two server certificates signed by it (needs the openssl CLI):
#   dev.pem / dev.key      localhost, 127.0.0.1 (the default certificate)
#   alt.pem / alt.key      images.example.test, *.cdn.example.test (to try SNI selection)
#   dev-ca.pem             the CA, for clients: curl --cacert dev-ca.pem ...
# Usage: bash certs/make-dev-cert.sh [OUT_DIR]     (default: this folder; files are git-ignored)
set -euo pipefail
out="${1:-$(dirname "$0")}"
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=imgedge dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout dev-ca.key -out dev-ca.pem 2>/dev/null
leaf() { # name, subject CN, subjectAltName
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA dev-ca.pem -CAkey dev-ca.key -CAcreateserial -days 30 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf dev localhost "DNS:localhost,IP:127.0.0.1"
leaf alt images.example.test "DNS:images.example.test,DNS:*.cdn.example.test"
rm -f dev-ca.srl
echo "wrote $(pwd)/dev-ca.pem dev.pem dev.key alt.pem alt.key"
