#!/usr/bin/env bash
# The vendored libjpeg-turbo's decoder against upstream's, side by side (vendor/turbojpeg-sys/
# IMGEDGE.md: imgedge-huffman.patch changes only the Huffman decoder's fast path).
#
#   benches/jpeg_decode.sh [-r ROUNDS] [-n ITERS] [FILE...]
#
# Builds libturbojpeg twice with cmake under $CARGO_TARGET_DIR/jpeg-decode: from the vendored
# sources, and from them with the patch reversed (upstream 3.1.0); links benches/jpeg_decode/
# decode.c (TurboJPEG's in-memory decode to RGB, as imgedge calls it) against each; then, pinned
# to one core, takes the least CPU time of ITERS decodes (default 5) of each FILE at 8/8, 4/8,
# 2/8 and 1/8, ROUNDS times (default 3) alternating the two builds, and prints the best of the
# rounds and the ratio per file and scale, and the sums per scale. FILE defaults to the corpus'
# baseline JPEGs.
# Needs cmake, nasm, patch and a C compiler (as the build does).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 iters=5
while getopts "r:n:" o; do
  case $o in
    r) rounds=$OPTARG ;;
    n) iters=$OPTARG ;;
    *) sed -n "2,16p" "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  for f in tests/corpus/valid/*.jpg; do
    file -b "$f" | grep -q "baseline, precision 8" && ! file -b "$f" | grep -q "components 4" && files+=("$f")
  done
fi
work="${CARGO_TARGET_DIR:-$HOME/.cache/imgedge-target}/jpeg-decode"
vendor=vendor/turbojpeg-sys
build() { # NAME REVERSE
  local src="$work/$1/src" b="$work/$1/build"
  rm -rf "$work/$1" && mkdir -p "$src" "$b"
  cp -r "$vendor/libjpeg-turbo" "$src/"
  [ "$2" = 0 ] || patch -R -s -p1 -d "$src" -i "$PWD/$vendor/imgedge-huffman.patch"
  (cd "$b" && cmake -DCMAKE_BUILD_TYPE=Release -DENABLE_SHARED=0 "$src/libjpeg-turbo" >/dev/null \
    && make -j"$(nproc)" turbojpeg-static >/dev/null)
  cc -O2 -I "$src/libjpeg-turbo/src" -I "$b" -o "$work/$1/decode" benches/jpeg_decode/decode.c "$b/libturbojpeg.a"
}
stamp=$(cat "$vendor/imgedge-huffman.patch" "$vendor/libjpeg-turbo/src/jdhuff.c" "$vendor/libjpeg-turbo/src/jdphuff.c" benches/jpeg_decode/decode.c | sha256sum | cut -c1-16)
if [ "$(cat "$work/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "# building upstream and shipped libturbojpeg under $work" >&2
  build upstream 1 && build shipped 0 && echo "$stamp" > "$work/stamp"
fi
cpu=$(($(nproc) - 1))
declare -A best
for _ in $(seq "$rounds"); do
  for v in upstream shipped; do
    for e in 8 4 2 1; do
      i=0
      for t in $(taskset -c "$cpu" "$work/$v/decode" "$iters" "$e" "${files[@]}"); do
        k="$v/$e/$i"; best[$k]=$(python3 -c "import sys; a=sys.argv[1]; print(min(float(a), $t) if a else $t)" "${best[$k]:-}")
        i=$((i + 1))
      done
    done
  done
done
echo "| file | scale | upstream ms | shipped ms | shipped/upstream |"
echo "|---|---:|---:|---:|---:|"
for e in 8 4 2 1; do
  us=0 ss=0
  for i in "${!files[@]}"; do
    u=${best[upstream/$e/$i]} s=${best[shipped/$e/$i]}
    python3 -c "import sys; print(f'| {sys.argv[1]} | {sys.argv[2]}/8 | {float(sys.argv[3]):.3f} | {float(sys.argv[4]):.3f} | {float(sys.argv[4])/float(sys.argv[3]):.3f} |')" "$(basename "${files[$i]}")" "$e" "$u" "$s"
    us=$(python3 -c "print($us + $u)") ss=$(python3 -c "print($ss + $s)")
  done
  python3 -c "print(f'| all {len(\"${files[*]}\".split())} files | $e/8 | {$us:.3f} | {$ss:.3f} | {$ss/$us:.3f} |')"
done
