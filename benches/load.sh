#!/usr/bin/env bash
# Load run against the real binary on loopback with wrk: a hot-set hit run and an all-miss run.
#   benches/load.sh [seconds] [connections]
# Starts imgedge on the embedded demo config (conf/samples, local origin) on spare ports,
# so it measures the server, not S3. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
bin=${IMGEDGE_BIN:-target/release/imgedge}
[ -x "$bin" ] || cargo build --release --quiet
dir=$(mktemp -d); trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/c.yaml" <<YAML
server: {threads: 2, pid_file: $dir/p.pid, upgrade_sock: $dir/u.sock}
edge: {listen: ["127.0.0.1:18080"]}
admin: {listen: "127.0.0.1:19091"}
origin: {socket: $dir/o.sock, source: local, local: {root: $PWD/conf/samples}}
cache: {memory_bytes: 1 GiB}
YAML
IMGEDGE_LOG=warn,pingora_cache::meta=error,pingora_core::apps::http_app=off "$bin" serve -c "$dir/c.yaml" & pid=$!
for _ in $(seq 100); do curl -sf localhost:19091/healthz >/dev/null && break; sleep 0.1; done

# Hits: 60 hot variants, warmed first; wrk picks them round-robin.
cat > "$dir/hits.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  local w = 100 + (i % 60) * 10
  return wrk.format("GET", "/image/kite.jpg?size=" .. w .. "x&utm_source=bench")
end
LUA
for w in $(seq 100 10 690); do curl -sf -o /dev/null "localhost:18080/image/kite.jpg?size=${w}x"; done
echo "== hits: $conns connections, ${secs}s"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$dir/hits.lua" http://127.0.0.1:18080 | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"

# Misses: every request a new variant (distinct size), 400-ish px JPEG from a 4 MP original.
cat > "$dir/miss.lua" <<'LUA'
local i = 0
local tid = 0
setup = function(thread) thread:set("tid", tid); tid = tid + 1 end
request = function()
  i = i + 1
  local w = 200 + ((i * 2 + tid) % 3800)
  local h = 100 + math.floor((i * 2 + tid) / 3800)
  return wrk.format("GET", "/image/kite.jpg?size=" .. w .. "x" .. h)
end
LUA
echo "== misses: 4 connections, ${secs}s"
wrk -t2 -c4 -d"${secs}s" --latency -s "$dir/miss.lua" http://127.0.0.1:18080 | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
curl -s localhost:19091/metrics | grep -E '^imgedge_(requests_total|transforms_total|resize_pool_rejected_total)'
