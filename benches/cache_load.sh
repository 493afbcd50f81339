#!/usr/bin/env bash
# Cache benches against the real binary with wrk (issue 4):
#   1. hit throughput from the memory tier and from the disk tier (c=32, loopback);
#   2. RSS after a 60 s mixed hit/miss load, jemalloc vs the system allocator.
#   benches/cache_load.sh [seconds-per-throughput-run] [seconds-of-mixed-load] [all|hits|rss]
# Local origin (conf/samples), so S3 is not measured. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}; mixed=${2:-60}; which=${3:-all}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d); pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$dir"' EXIT

echo "building the system-allocator binary, then the default (jemalloc) one..."
cargo build --release --quiet --no-default-features
cp "$target/release/imgedge" "$dir/imgedge-system"
cargo build --release --quiet
cp "$target/release/imgedge" "$dir/imgedge-jemalloc"
# tikv-jemallocator's symbols are prefixed `_rjem_`: the system build must have none of them.
if grep -qa _rjem_malloc "$dir/imgedge-system" || ! grep -qa _rjem_malloc "$dir/imgedge-jemalloc"; then
  echo "allocator check failed: the system build links jemalloc or the default build does not" >&2
  exit 1
fi

port=18180; admin=19191
start() { # binary, extra cache yaml
  cat > "$dir/c.yaml" <<YAML
server: {threads: 2, pid_file: $dir/p.pid, upgrade_sock: $dir/u.sock}
edge: {listen: ["127.0.0.1:$port"]}
admin: {listen: "127.0.0.1:$admin"}
origin: {socket: $dir/o.sock, source: local, local: {root: $PWD/conf/samples}}
cache: $2
YAML
  IMGEDGE_LOG=warn,pingora_cache::meta=error,pingora_core::apps::http_app=off "$1" serve -c "$dir/c.yaml" & pid=$!
  for _ in $(seq 100); do curl -sf "localhost:$admin/healthz" >/dev/null && break; sleep 0.1; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
metric() { curl -s "localhost:$admin/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }

# 300 variants (~20 KB each, ~6 MB): more than a 1 MiB memory tier holds.
cat > "$dir/hits.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/image/kite.jpg?size=" .. (100 + (i % 300) * 2) .. "x&utm_source=bench")
end
LUA
warm() { for i in $(seq 0 299); do curl -sf -o /dev/null "localhost:$port/image/kite.jpg?size=$((100 + i * 2))x"; done; }
run_hits() {
  wrk -t2 -c32 -d"${secs}s" --latency -s "$dir/hits.lua" "http://127.0.0.1:$port" \
    | awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%s req/s, p50 %s, p99 %s", r, p50, p99}'
}

if [ "$which" != rss ]; then
echo "| hits from | req/s, latency (c=32, ${secs}s) | lookups served by disk |"
echo "|---|---|---|"
start "$dir/imgedge-jemalloc" "{memory_bytes: 1 GiB}"
warm; echo "| memory tier | $(run_hits) | 0 |"; stop
rm -rf "$dir/disk"
start "$dir/imgedge-jemalloc" "{memory_bytes: 1 MiB, max_object_bytes: 512 KiB, disk: {dir: $dir/disk, max_bytes: 1 GiB}}"
warm; sleep 1
d0=$(metric 'imgedge_cache_lookups_total{result="hit",tier="disk"}')
m0=$(metric 'imgedge_cache_lookups_total{result="hit",tier="memory"}')
line=$(run_hits)
d1=$(metric 'imgedge_cache_lookups_total{result="hit",tier="disk"}')
m1=$(metric 'imgedge_cache_lookups_total{result="hit",tier="memory"}')
echo "| disk tier (1 MiB memory in front) | $line | $(awk -v d=$((d1 - d0)) -v m=$((m1 - m0)) 'BEGIN {printf "%.0f%%", 100 * d / (d + m)}') |"
stop
fi
[ "$which" = hits ] && exit 0

# Mixed load: hits on the 300 warmed variants plus a stream of new variants (misses), then RSS.
cat > "$dir/miss.lua" <<'LUA'
local i = 0
local tid = 0
setup = function(thread) thread:set("tid", tid); tid = tid + 1 end
request = function()
  i = i + 1
  return wrk.format("GET", "/image/kite.jpg?size=" .. (100 + (i * 2 + tid) % 3000) .. "x" .. (50 + math.floor(i / 1500)))
end
LUA
echo
echo "| allocator | RSS after ${mixed}s mixed load | peak RSS | requests |"
echo "|---|---|---|---|"
for alloc in jemalloc system; do
  start "$dir/imgedge-$alloc" "{memory_bytes: 256 MiB}"
  warm
  wrk -t1 -c2 -d"${mixed}s" -s "$dir/miss.lua" "http://127.0.0.1:$port" >/dev/null & misses=$!
  wrk -t1 -c16 -d"${mixed}s" -s "$dir/hits.lua" "http://127.0.0.1:$port" >/dev/null
  wait "$misses" || true; sleep 1
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status"); hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  reqs=$(metric imgedge_requests_total)
  echo "| $alloc | $((rss / 1024)) MiB | $((hwm / 1024)) MiB | $reqs |"
  stop
done
