#!/usr/bin/env bash
# Make a development CA and a localhost certificate signed by it (needs openssl).
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=imgedge dev CA" \
  -keyout dev-ca.key -out dev-ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout dev.key -out dev.csr 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" > dev.ext
openssl x509 -req -in dev.csr -CA dev-ca.pem -CAkey dev-ca.key -CAcreateserial -days 30 \
  -extfile dev.ext -out dev.pem 2>/dev/null
rm -f dev.csr dev.ext dev-ca.srl
echo "wrote $(pwd)/dev-ca.pem dev.pem dev.key"
