#!/usr/bin/env bash
# Load harness: replay a URL list or a generated trace against imgedge with wrk (+ load.lua) and
# print one table: requests/s, p50/p99/p99.9 for hits and for misses, errors, hit ratio.
#
#   benches/load.sh [-d SECS] [-c CONNS] [-t URL] [RUN...]        (default RUNs: hot miss)
#
#   hot          60 hot variants written with param-order/utm noise (and UA noise from load.lua),
#                warmed with `imgedge warm`, then replayed: the hit path
#   miss         every request a new variant (at most 4 connections): the miss path
#   trace        a generated trace (benches/trace.py: Zipf over 500 ids x 12 sizes, noisy),
#                starting cold: a realistic mix
#   formats      format=auto misses with Chrome's Accept (every request a new 300-899 px
#                variant, at most 4 connections) on three nodes, one after the other: avif
#                inline (the client waits for the AVIF), avif deferred (WebP now, AVIF in the
#                background) and, for scale, webp (Android WebView's Accept): miss p50/p99,
#                then the AVIF upgrades each node made
#   replay=FILE  a URL list, one path or URL per line (e.g. URLs cut out of access logs)
#   mirror       the hot run on three nodes side by side, with ratios to the first: mirroring
#                off; on (sample $MIRROR_SAMPLE, default 1.0, to a fourth node on these same
#                cores); and on with the queue always full (target a black hole: every offer
#                dropped), which leaves only the request path's own cost
#   cluster      three nodes as one POP (`cluster:`) vs three independent nodes, one after the
#                other, each cold, on the same Zipf trace with URL noise ($CLUSTER_REQUESTS,
#                default 6000, over 300 ids) spread at random over the three by
#                benches/cluster_load.py, then 20 purges: source fetches, resizes, POP hit ratio,
#                hit p50/p99 of local hits vs peer fills, purge latency (one table)
#
# Without -t it starts this checkout's release build (or $IMGEDGE_BIN) on 127.0.0.1:18380 (admin 19380; mirror uses
# 18381-18385; cluster 18391-18396, admins 19391-19396, peers 18491-18493, even with -t) with a local origin holding 500 ids (hard links to the kite sample), so it
# measures the server, not S3. With -t URL it loads that running node instead (hot and miss need
# /image/kite.jpg there, trace needs img00000.jpg…; replay works against anything).
# Needs wrk built with LuaJIT (Debian's: apt-get install wrk; not for cluster) and python3 for trace and cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=10 conns=16 target=""
while getopts "d:c:t:" o; do
  case $o in
    d) secs=$OPTARG ;;
    c) conns=$OPTARG ;;
    t) target=${OPTARG%/} ;;
    *) sed -n '2,32p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
runs=("$@"); [ ${#runs[@]} -gt 0 ] || runs=(hot miss)
[ "${runs[*]}" = cluster ] || command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
if [ -z "${IMGEDGE_BIN:-}" ]; then  # wherever cargo puts this checkout's build
  cargo build --release --quiet
  tdir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
fi
bin=${IMGEDGE_BIN:-$tdir/release/imgedge}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

# Originals for a local node: 500 ids, all the 2560x1600 kite (hard links: no disk cost).
mkdir -p "$dir/root"
cp conf/samples/* "$dir/root/"
for i in $(seq -f "%05g" 0 499); do ln "$dir/root/kite.jpg" "$dir/root/img$i.jpg"; done

# start_node NAME PORT ADMIN_PORT [EXTRA_YAML]
start_node() {
  cat > "$dir/$1.yaml" <<YAML
server: {threads: 2, pid_file: $dir/$1.pid, upgrade_sock: $dir/$1-up.sock}
edge: {listen: ["127.0.0.1:$2"]}
admin: {listen: "127.0.0.1:$3"${ADMIN_EXTRA:-}}
origin: {socket: $dir/$1-origin.sock, source: local, local: {root: $dir/root}}
cache: {memory_bytes: 1 GiB}
${4:-}
YAML
  IMGEDGE_LOG=warn,pingora_cache::meta=error,pingora_core::apps::http_app=off \
    "$bin" serve -c "$dir/$1.yaml" >/dev/null 2>>"$dir/$1.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$3/healthz" >/dev/null && return; sleep 0.1; done
  echo "imgedge ($1) did not start:" >&2; cat "$dir/$1.log" >&2; exit 1
}

# The hot set: 60 variants, each written three ways.
for w in $(seq 100 10 690); do
  echo "/image/kite.jpg?size=${w}x&utm_source=bench"
  echo "/image/kite.jpg?utm_campaign=c$w&size=${w}x"
  echo "/image/kite.jpg?q=80&size=${w}x&fit=inside"
done > "$dir/hot.txt"

warm() { # URL: warm the hot set, quietly, with imgedge's own tool
  "$bin" warm "$dir/hot.txt" --target "$1" --rate 0 --concurrency 2 --progress-every 1h >"$dir/warm.out" 2>&1 \
    || { cat "$dir/warm.out" >&2; exit 1; }
}

# wrk_run NAME URL CONNS MODE ARG [SECS]: one row of the table
wrk_run() {
  wrk -t"$3" -c"$3" -d"${6:-$secs}s" -s benches/load.lua "$2" -- "$4" "$5" "$1" | grep '^ROW' >> "$dir/rows" \
    || echo "ROW	$1	$3	(wrk failed)" >> "$dir/rows"
}

url=${target:-http://127.0.0.1:18380}
need_local=0
for r in "${runs[@]}"; do [ "$r" = mirror ] || [ "$r" = cluster ] || need_local=1; done
[ -n "$target" ] || [ $need_local = 0 ] || start_node main 18380 19380
: > "$dir/rows"
for r in "${runs[@]}"; do
  case $r in
    hot) warm "$url"; wrk_run hot "$url" "$conns" list "$dir/hot.txt" ;;
    miss) wrk_run miss "$url" $((conns < 4 ? conns : 4)) miss $((RANDOM % 3000)) ;;
    trace)
      python3 benches/trace.py --ids 500 --requests 200000 --seed 1 > "$dir/trace.txt"
      wrk_run trace "$url" "$conns" list "$dir/trace.txt" ;;
    formats)
      chrome="image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
      webview="image/webp,image/apng,image/*,*/*;q=0.8"
      start_node fmt-inline 18386 19386 "transform: {default_format: auto, avif: inline}"
      start_node fmt-deferred 18387 19387 "transform: {default_format: auto, avif: deferred}"
      start_node fmt-webp 18388 19388 "transform: {default_format: auto}"
      c=$((conns < 4 ? conns : 4))
      LOAD_ACCEPT=$chrome wrk_run auto-avif-inline http://127.0.0.1:18386 "$c" pagemiss 1
      LOAD_ACCEPT=$chrome wrk_run auto-avif-deferred http://127.0.0.1:18387 "$c" pagemiss 2
      LOAD_ACCEPT=$webview wrk_run auto-webp http://127.0.0.1:18388 "$c" pagemiss 3
      sleep 2 # let queued upgrades land
      for n in inline:19386 deferred:19387; do
        curl -s "127.0.0.1:${n#*:}/metrics" | grep -E '^imgedge_(avif_upgrades_total|transforms_total)' \
          | sed "s/^/  ${n%:*}: /"
      done > "$dir/formats.txt" ;;
    replay=*)
      f=${r#replay=}
      sed -E 's#^[a-z]+://[^/]+##' "$f" > "$dir/replay.txt"
      wrk_run "replay:$(basename "$f")" "$url" "$conns" list "$dir/replay.txt" ;;
    mirror)
      start_node mirror-b 18383 19383
      start_node mirror-off 18381 19381
      start_node mirror-on 18382 19382 "mirror: {target: \"http://127.0.0.1:18383\", sample: ${MIRROR_SAMPLE:-1.0}}"
      # A black hole (listens, never accepts): one mirrored request hangs, the one-slot queue
      # stays full, every other offer is dropped. What is left is the request path's own cost.
      python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",18385)); s.listen(64); time.sleep(3600)' &
      pids+=($!)
      start_node mirror-drop 18384 19384 "mirror: {target: \"http://127.0.0.1:18385\", sample: 1.0, queue_len: 1, concurrency: 1, timeout: 1h}"
      for p in 18381 18382 18384; do warm http://127.0.0.1:$p; done
      # Three rounds in rotated order, each config a third of the time per round; the table
      # shows each config's median round, so background load hits all three alike.
      third=$(( secs / 3 > 3 ? secs / 3 : 3 ))
      cfgs=(off:18381 on:18382 drop:18384)
      for round in 0 1 2; do
        for k in 0 1 2; do
          c=${cfgs[$(( (round + k) % 3 ))]}
          wrk_run "mirror-${c%:*}" "http://127.0.0.1:${c#*:}" "$conns" list "$dir/hot.txt" "$third"
        done
      done
      for n in on:19382 drop:19384; do
        curl -s "127.0.0.1:${n#*:}/metrics" | grep '^imgedge_mirror_requests_total' | sed "s/^/  mirror-${n%:*}: /"
      done > "$dir/mirror.txt" ;;
    cluster)
      python3 benches/trace.py --ids 300 --requests "${CLUSTER_REQUESTS:-6000}" --seed 2 > "$dir/ctrace.txt"
      token=bench-purge-token-0123456789
      export ADMIN_EXTRA=", purge_token: $token"
      peers="127.0.0.1:18491, 127.0.0.1:18492, 127.0.0.1:18493"
      header=--header
      for mode in cluster independent; do
        first=${#pids[@]} edges="" admins=""
        for k in 1 2 3; do
          if [ $mode = cluster ]; then
            e=1839$k a=1939$k
            extra="cluster: {listen: \"127.0.0.1:1849$k\", peers: [$peers], secret: bench-cluster-secret-0123456789abcdef}"
          else
            e=1839$((k + 3)) a=1939$((k + 3)) extra=""
          fi
          start_node "$mode-$k" "$e" "$a" "$extra"
          edges+="${edges:+,}http://127.0.0.1:$e" admins+="${admins:+,}http://127.0.0.1:$a"
        done
        if [ $mode = cluster ]; then  # every node sees every peer healthy
          for a in ${admins//,/ }; do
            for _ in $(seq 100); do
              curl -sf "$a/cluster" | python3 -c 'import json,sys; m=json.load(sys.stdin)["members"]; sys.exit(not (len(m) == 3 and all(x["healthy"] for x in m)))' && break
              sleep 0.1
            done
          done
        fi
        python3 benches/cluster_load.py $header --label "$mode (3 nodes)" --edges "$edges" --admins "$admins" \
          --trace "$dir/ctrace.txt" --conns "$conns" --token "$token" --purges 20 >> "$dir/cluster.txt"
        header=""
        # SIGINT: Pingora's fast shutdown (SIGTERM would wait out its grace period).
        for p in "${pids[@]:$first}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
        pids=("${pids[@]:0:$first}")
      done
      unset ADMIN_EXTRA ;;
    *) echo "unknown run: $r" >&2; exit 2 ;;
  esac
done

[ -s "$dir/rows" ] && echo "imgedge load: ${secs}s per run, one wrk thread per connection; latencies in ms, client side"
[ -s "$dir/rows" ] && awk -F'\t' '
  function median(s,   a, n, i, j, t) {  # of a space-separated list; "-" when any is "-"
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) { if (a[i] == "-") return "-"
      for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t } }
    return a[int((n + 1) / 2)]
  }
  { if (!($2 in conns)) order[++n] = $2
    conns[$2] = $3; rounds[$2]++
    for (c = 4; c <= 12; c++) v[$2, c] = v[$2, c] " " $c
    hits[$2] += $5; misses[$2] += $9; ratio[$2] = ratio[$2] " " $14
    split($13, e, " "); err[$2] += e[1]; if ($13 ~ /\(/) detail[$2] = detail[$2] " " substr($13, length(e[1]) + 2) }
  END {
    fmt = "%-24s %5s %9s | %8s %7s %7s %7s | %7s %7s %7s %7s | %-7s %s\n"
    printf fmt, "run", "conns", "req/s", "hits", "p50", "p99", "p99.9", "misses", "p50", "p99", "p99.9", "errors", "hit ratio"
    for (i = 1; i <= n; i++) { r = order[i]
      for (c = 4; c <= 12; c++) m[r, c] = median(v[r, c])
      gsub(/%/, "", ratio[r])
      printf fmt, r (rounds[r] > 1 ? " (median of " rounds[r] ")" : ""), conns[r], m[r, 4], hits[r], m[r, 6], m[r, 7], m[r, 8],
        misses[r], m[r, 10], m[r, 11], m[r, 12], err[r] detail[r], median(ratio[r]) "%" }
    o = "mirror-off"
    if ((o in conns) && m[o, 4] > 0 && m[o, 6] > 0 && m[o, 7] > 0 && m[o, 8] > 0)
      for (i = 1; i <= n; i++) { r = order[i]
        if (r ~ /^mirror-(on|drop)$/)
          printf "%s / %s: req/s x%.3f, hit p50 x%.3f, p99 x%.3f, p99.9 x%.3f\n", r, o,
            m[r, 4] / m[o, 4], m[r, 6] / m[o, 6], m[r, 7] / m[o, 7], m[r, 8] / m[o, 8] }
  }
' "$dir/rows"
[ -s "$dir/mirror.txt" ] && cat "$dir/mirror.txt"
[ -s "$dir/formats.txt" ] && cat "$dir/formats.txt"
if [ -s "$dir/cluster.txt" ]; then
  echo "cluster: $(grep -c '^/' "$dir/ctrace.txt") requests (Zipf over 300 ids x 12 sizes, URL noise), $conns connections, each request to one of 3 nodes at random; latencies client side"
  cat "$dir/cluster.txt"
fi
exit 0
