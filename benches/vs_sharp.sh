#!/usr/bin/env bash
# Misses side by side: imgedge vs a sharp server (node + sharp 0.34, libvips 8.17), per server
# CPU-second, over HTTP, in one run.
#
#   benches/vs_sharp.sh [-r ROUNDS] [-c CONNS] [-m MEZZANINE_BYTES] [BIN...]
#
# Every server reads the same originals from local files (imgedge: `origin.source: local`;
# sharp: benches/peers/sharp.js serve) and answers JPEG Q80 4:2:0, metadata stripped. sharp runs
# twice: with its defaults (`fastShrinkOnLoad`: a JPEG decoded at the largest power-of-two scale
# the shrink allows) and "exact" (libvips thumbnail's rule: keep at least 2x for the resampler).
# Cases (benches/vs_sharp.py): distinct 2 MP 1414² originals → 400w, distinct 12 MP originals
# → 400w and → 1200w, and the Zipf trace's misses (every distinct (id, width) of 50,000 requests
# over 60 ids, in order of first request: imgedge's mezzanine cache serves later sizes of a hot
# id without decoding it again; sharp decodes every one). Each URL is requested once over CONNS
# keep-alive connections (default 2) by a Python client, from a freshly started server; every
# imgedge answer must be a MISS. The server is pinned to core 0 and the client to the other
# cores (`taskset`); ROUNDS rounds (default 3) rotate the order of the servers, and the median
# round is reported: images per server CPU-second (the server's process tree, from /proc), the
# ratios, the SSIM of each server's first answer against a Lanczos resize of the full decode,
# the wall rate and client-side p50/p99.
#
# -m: imgedge's transform.mezzanine_bytes (e.g. "1 GiB"; default: the shipped default).
# BIN...: imgedge binaries (default: this checkout's release build), so a change to the miss path
# is measured against the binary before it in the same run.
# Installs sharp from npm into ~/.cache/imgedge-vs-sharp (needs node and npm: Debian's
# `apt-get install nodejs npm`; this script installs them with apt-get when missing and it may),
# and numpy + Pillow into vs_libvips.sh's venv for the SSIM. The originals (~220 MB, made once
# from tests/corpus by sharp) are kept under $CARGO_TARGET_DIR/vs-sharp.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 conns=2 mezz=""
while getopts "r:c:m:" o; do
  case $o in
    r) rounds=$OPTARG ;;
    c) conns=$OPTARG ;;
    m) mezz=$OPTARG ;;
    *) sed -n '2,28p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgedge-target}"
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --quiet
  bins=("$CARGO_TARGET_DIR/release/imgedge")
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get install -y -qq nodejs npm || { $sudo apt-get update -qq && $sudo apt-get install -y -qq nodejs npm; }; } >/dev/null \
    || { echo "needs node and npm (apt-get install nodejs npm)" >&2; exit 1; }
fi
nm="${VS_SHARP_DIR:-$HOME/.cache/imgedge-vs-sharp}"
[ -d "$nm/node_modules/sharp" ] || (mkdir -p "$nm" && cd "$nm" && npm install --no-audit --no-fund --silent sharp@0.34 >/dev/null)
export NODE_PATH="$nm/node_modules"
sharp_version=$(node -e 'const s=require("sharp"); console.log(`sharp ${s.versions.sharp}, libvips ${s.versions.vips}`)')

work="$CARGO_TARGET_DIR/vs-sharp"
if [ ! -f "$work/orig/.done" ]; then
  echo "# making the originals (once) under $work/orig"
  node benches/peers/sharp.js prepare tests/corpus/valid "$work/orig"
  touch "$work/orig/.done"
fi
cores=$(nproc)
[ "$cores" -ge 2 ] || { echo "needs 2 cores (server and client pinned apart)" >&2; exit 1; }
load_cpus=1-$((cores - 1))

dir=$(mktemp -d)
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; sleep 0.3; rm -rf "$dir"; }
trap cleanup EXIT
python3 benches/vs_sharp.py lists "$dir/lists"
wait_http() { # URL: up to 10 s for it to answer
  for _ in $(seq 100); do curl -s -o /dev/null "$1" && return; sleep 0.1; done
  echo "nothing answers at $1" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }

# imgedge as shipped for one core: one resize worker, default caches (mezzanines 256 MiB).
cat > "$dir/ie.yaml" <<YAML
server: {threads: 1, pid_file: $dir/ie.pid, upgrade_sock: $dir/ie-up.sock, grace_period: 1s, graceful_shutdown_timeout: 1s}
edge: {listen: ["127.0.0.1:18727"], access_log: {format: "off"}}
admin: {listen: "127.0.0.1:18737"}
origin: {socket: $dir/ie-origin.sock, source: local, local: {root: $work/orig}}
transform: {workers: 1${mezz:+, mezzanine_bytes: $mezz}}
YAML
start() { # SERVER: start it on core 0; sets pid, port
  case $1 in
    imgedge*)
      IMGEDGE_LOG=warn taskset -c 0 "${bins[${1#imgedge}]}" serve -c "$dir/ie.yaml" >/dev/null 2>>"$dir/ie.log" & pid=$! port=18727
      wait_http http://127.0.0.1:18737/healthz ;;
    sharp|sharp-exact)
      mode=; [ "$1" = sharp ] || mode=exact
      taskset -c 0 node benches/peers/sharp.js serve "$work/orig" 18728 $mode 2>>"$dir/sharp.log" & pid=$! port=18728
      wait_http http://127.0.0.1:18728/ ;;
  esac
}

names=(); for k in "${!bins[@]}"; do names+=("imgedge$k"); done; names+=(sharp sharp-exact)
echo "# misses: imgedge vs $sharp_version; $rounds rounds, c=$conns; server on core 0, client on $load_cpus"
for k in "${!bins[@]}"; do echo "# imgedge$k = ${bins[$k]}"; done
for round in $(seq 0 $((rounds - 1))); do
  for case in 2mp-400 12mp-400 12mp-1200 zipf; do
    r=$((round % ${#names[@]})); servers=("${names[@]:$r}" "${names[@]:0:$r}")
    for s in "${servers[@]}"; do
      start "$s"
      taskset -c "$load_cpus" python3 benches/vs_sharp.py run "$s/$case#$round" "http://127.0.0.1:$port" \
        "$dir/lists/$case.txt" "$pid" "$conns" "$dir/results.jsonl"
      stop "$pid"; pid=""
    done
  done
done
echo
venv="${VS_LIBVIPS_VENV:-$HOME/.cache/imgedge-vs-libvips}"  # numpy + Pillow for SSIM
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy pillow
cp "$dir/results.jsonl" "$work/last-results.jsonl"  # kept for a second look
"$venv/bin/python" benches/vs_sharp.py report "$dir/results.jsonl" "$work/orig"
