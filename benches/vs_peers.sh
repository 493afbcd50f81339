#!/usr/bin/env bash
# Hits side by side: imgedge vs nginx proxy_cache vs Varnish, per server CPU-second, in one run.
#
#   benches/vs_peers.sh [-d SECS] [-c CONNS] [-r ROUNDS] [-n OBJECTS] [BIN...]
#
# Every server serves the same objects (the hot set: OBJECTS variants of the kite sample at
# widths 300-540 px, 15-40 KiB, made by the first imgedge binary and stored as files for the
# peers' origin), with access logs off, under the same wrk script (benches/peers/replay.lua: the
# list replayed in order, a random User-Agent per request) after a warm-up that makes every
# object a hit. On a 2-core machine the server is pinned to core 0 and wrk to core 1 (`taskset`);
# unpinned, the figures mostly measure how the scheduler splits two cores between server and
# load generator. With more cores the server gets cores 0..S-1 (S = $SERVER_CORES, default 1)
# and wrk the rest. ROUNDS rounds (default 3) run the servers in rotated order; each server's
# median round is reported: requests per server CPU-second (CPU from /proc over the whole
# process tree, benches/peers/loadrun.py), p50/p99 and the ratio to the best peer.
#
# BIN...: imgedge binaries to compare (default: this checkout's release build), so a change to the
# hit path is measured against the binary before it in the same run.
# Needs wrk, nginx and varnishd (Debian: apt-get install wrk nginx-light varnish; this script
# installs them with apt-get when missing and it may) and a C compiler (Varnish compiles its VCL).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=10 conns=32 rounds=3 objects=40
while getopts "d:c:r:n:" o; do
  case $o in
    d) secs=$OPTARG ;;
    c) conns=$OPTARG ;;
    r) rounds=$OPTARG ;;
    n) objects=$OPTARG ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --quiet
  tdir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  bins=("$tdir/release/imgedge")
fi
missing=()
for t in wrk:wrk nginx:nginx-light varnishd:varnish; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get install -y -qq "${missing[@]}" || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"; }; } >/dev/null \
    || { echo "needs: ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1; }
fi
cc=$(command -v cc || command -v gcc) || { echo "Varnish needs a C compiler (cc)" >&2; exit 1; }
cores=$(nproc)
srv_cores=${SERVER_CORES:-1}
[ "$cores" -gt "$srv_cores" ] || { echo "needs more than $srv_cores cores" >&2; exit 1; }
srv_cpus=0-$((srv_cores - 1)) load_cpus=$srv_cores-$((cores - 1))
wrk_threads=$(( cores - srv_cores < 8 ? cores - srv_cores : 8 ))

dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$dir"; }
trap cleanup EXIT
mkdir -p "$dir/root" "$dir/resized"
cp conf/samples/kite.jpg "$dir/root/"
for i in $(seq 0 $((objects - 1))); do echo "/image/kite.jpg?size=$((300 + i * 240 / objects))x"; done > "$dir/hot.txt"

wait_http() { # URL: up to 10 s for it to answer
  for _ in $(seq 100); do curl -s -o /dev/null "$1" && return; sleep 0.1; done
  echo "nothing answers at $1" >&2; exit 1
}
warm() { # BASE: each object requested twice (fill, then hit)
  for _ in 1 2; do while read -r u; do curl -sf -o /dev/null "$1$u" || echo "warm: $1$u failed" >&2; done < "$dir/hot.txt"; done
}
stop() { kill "$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }

start_imgedge() { # K: binary index; sets pid
  cat > "$dir/ie$1.yaml" <<YAML
server: {threads: $srv_cores, pid_file: $dir/ie$1.pid, upgrade_sock: $dir/ie$1-up.sock, grace_period: 1s, graceful_shutdown_timeout: 1s}
edge: {listen: ["127.0.0.1:18707"], access_log: {format: "off"}, keepalive_requests: 0}
admin: {listen: "127.0.0.1:18717"}
origin: {socket: $dir/ie$1-origin.sock, source: local, local: {root: $dir/root}}
transform: {workers: $srv_cores}
cache: {memory_bytes: 1 GiB}
YAML
  IMGEDGE_LOG=warn taskset -c "$srv_cpus" "${bins[$1]}" serve -c "$dir/ie$1.yaml" >/dev/null 2>>"$dir/ie$1.log" &
  pid=$!; pids+=($pid)
  wait_http http://127.0.0.1:18717/healthz
}

# The objects as files, made by imgedge itself, for the peers' static origin.
start_imgedge 0
while read -r u; do
  w=${u##*size=}; mkdir -p "$dir/resized/$w"
  curl -sf -o "$dir/resized/$w/kite.jpg" "http://127.0.0.1:18707$u"
done < "$dir/hot.txt"
stop "$pid"
bytes=$(du -sb "$dir/resized" | cut -f1)

# The peers' origin: nginx serving the files (on the load cores: used only while warming).
# nginx workers and varnishd run as this user (`user`, `-j none`): the files are in a private
# temporary directory.
cat > "$dir/origin.conf" <<NG
user $(id -un); worker_processes 1; pid $dir/origin.pid; error_log $dir/origin.err warn; daemon off;
events { worker_connections 1024; }
http { types { image/jpeg jpg; } access_log off;
 client_body_temp_path $dir/tb; proxy_temp_path $dir/tp; fastcgi_temp_path $dir/tf; uwsgi_temp_path $dir/tu; scgi_temp_path $dir/ts;
 server { listen 127.0.0.1:18706; location ~ "^/image/(?<name>[A-Za-z0-9._-]+)\$" { alias $dir/resized/\$arg_size/\$name; } } }
NG
taskset -c "$load_cpus" nginx -c "$dir/origin.conf" & pids+=($!)
wait_http http://127.0.0.1:18706/

# nginx proxy_cache: the cache key is path + size (what imgedge's key is made of). sendfile and
# tcp_nopush off: on loopback they stall small cached responses (p99 ~44 ms, the worker idle).
cat > "$dir/nc.conf" <<NG
user $(id -un); worker_processes $srv_cores; pid $dir/nc.pid; error_log $dir/nc.err warn; daemon off;
events { worker_connections 8192; }
http { access_log off; sendfile off; tcp_nopush off; keepalive_requests 1000000;
 client_body_temp_path $dir/tb; proxy_temp_path $dir/tp; fastcgi_temp_path $dir/tf; uwsgi_temp_path $dir/tu; scgi_temp_path $dir/ts;
 proxy_cache_path $dir/nc-cache levels=1:2 keys_zone=img:32m max_size=1g inactive=24h use_temp_path=off;
 upstream o { server 127.0.0.1:18706; keepalive 16; }
 server { listen 127.0.0.1:18703 backlog=4096;
  location /image/ { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_cache img;
    proxy_cache_key \$uri\$arg_size; proxy_cache_valid 200 24h; add_header X-Cache \$upstream_cache_status always; } } }
NG
# Varnish: malloc storage, the cookie dropped, a day's TTL.
cat > "$dir/v.vcl" <<V
vcl 4.1;
backend o { .host = "127.0.0.1"; .port = "18706"; }
sub vcl_recv { unset req.http.Cookie; }
sub vcl_backend_response { set beresp.ttl = 1d; }
sub vcl_deliver { if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; } }
V

start() { # NAME: start that server pinned, warm it; sets pid, port
  case $1 in
    imgedge*) start_imgedge "${1#imgedge}"; port=18707 ;;
    nginx)
      rm -rf "$dir/nc-cache"
      taskset -c "$srv_cpus" nginx -c "$dir/nc.conf" & pid=$!; pids+=($pid); port=18703 ;;
    varnish)
      rm -rf "$dir/vw"
      taskset -c "$srv_cpus" varnishd -F -j none -n "$dir/vw" -a 127.0.0.1:18705 -f "$dir/v.vcl" -s malloc,1G -T 127.0.0.1:0 \
        -p cc_command="exec $cc -fpic -shared -o %o %s" >"$dir/v.log" 2>&1 & pid=$!; pids+=($pid); port=18705 ;;
  esac
  wait_http "http://127.0.0.1:$port/image/kite.jpg?size=300x"
  warm "http://127.0.0.1:$port"
  mkdir -p "$dir/run"; echo "$pid" > "$dir/run/$1.pid"
}

names=(); for k in "${!bins[@]}"; do names+=("imgedge$k"); done; names+=(nginx varnish)
echo "# hits: ${#names[@]} servers x $rounds rounds x ${secs}s, $objects objects ($((bytes / objects / 1024)) KiB mean), c=$conns; server on cores $srv_cpus, wrk (-t$wrk_threads) on $load_cpus"
for k in "${!bins[@]}"; do echo "# imgedge$k = ${bins[$k]}"; done
for round in $(seq 0 $((rounds - 1))); do
  for k in "${!names[@]}"; do
    n=${names[$(( (k + round) % ${#names[@]} ))]}
    start "$n"
    taskset -c "$load_cpus" python3 benches/peers/loadrun.py --label "$n#$round" --out "$dir/results.jsonl" \
      -t "$wrk_threads" -c "$conns" -d "$secs" --base "http://127.0.0.1:$port" --urls "$dir/hot.txt" \
      --pidfile "$dir/run/$n.pid" --meta "server=$n" | sed 's/^/  /'
    stop "$pid"
  done
done
python3 - "$dir/results.jsonl" "${names[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = sys.argv[2:]
out = {}
for n in names:
    rs = [r for r in rows if r["server"] == n]
    for r in rs:
        cpu = r[f"cpu_s.{n}"]
        r["per_cpu"] = r["responses"] / cpu if cpu else 0.0
        r["errors"] = r["non2xx"] + r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
    rs.sort(key=lambda r: r["per_cpu"])
    out[n] = (rs[len(rs) // 2], [r["per_cpu"] for r in rs], sum(r["hits"] for r in rs), sum(r["responses"] for r in rs))
best = max(out[n][0]["per_cpu"] for n in names if not n.startswith("imgedge"))
print("| server | req per server CPU-s (median; rounds) | ratio to best peer | req/s | server CPU % | p50 ms | p99 ms | errors | X-Cache HIT |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    m, all_, hits, resp = out[n]
    print(f"| {n} | {m['per_cpu']:,.0f} ({', '.join(f'{x/1000:.1f}k' for x in all_)}) | {m['per_cpu']/best:.2f} | "
          f"{m['rps']:,.0f} | {m[f'cpu_pct.{n}']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']} | "
          f"{100*hits/max(1,resp):.1f} % |")
PY
