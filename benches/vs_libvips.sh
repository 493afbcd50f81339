#!/usr/bin/env bash
# imgedge's transform vs libvips, one thread each, on the same inputs and outputs, in one run.
# Installs pyvips + pyvips-binary (libvips 8.x wheels), numpy and Pillow into a venv under
# ~/.cache, makes the inputs from tests/corpus, times both, and prints images per CPU-second,
# the ratio and the SSIM of imgedge's output against libvips' output.
#
#   bash benches/vs_libvips.sh            # ~2 s of CPU per case and side
#   VS_LIBVIPS_SECONDS=5 bash benches/vs_libvips.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imgedge-target}"
venv="${VS_LIBVIPS_VENV:-$HOME/.cache/imgedge-vs-libvips}"
work="$CARGO_TARGET_DIR/vs-libvips"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q pyvips pyvips-binary numpy pillow

"$venv/bin/python" benches/vs_libvips.py prepare "$work"
# Build first so compilation never overlaps the timings.
cargo bench --bench vs_libvips --no-run
VIPS_CONCURRENCY=1 "$venv/bin/python" benches/vs_libvips.py libvips "$work"
VS_LIBVIPS_DIR="$work" cargo bench --bench vs_libvips
"$venv/bin/python" benches/vs_libvips.py report "$work"
