#!/usr/bin/env python3
"""What upstream libjpeg-turbo 3.1.0 decodes the corpus JPEGs to: the fixture of
src/origin/transform/jpeg.rs' `decodes_as_upstream_libjpeg_turbo`, which must match it byte for
byte with the vendored decoder (vendor/turbojpeg-sys/IMGEDGE.md: its one change to the Huffman
decoder must not change a sample).

    python3 tests/data/make_jpeg_decode_hashes.py      # needs cmake, nasm, patch, a C compiler

It builds libturbojpeg from vendor/turbojpeg-sys/libjpeg-turbo with imgedge-huffman.patch
reversed and links tjdecode.c (the Rust `decode`'s calls, in C) against it (TJDECODE=path skips
that and uses the given program), then writes, for every non-CMYK corpus JPEG at 1/8, 2/8, 4/8
and 8/8 scale (and of two files with restart markers, RESTART, and a small progressive one,
PROGRESSIVE) and for MUTANTS seeded corruptions of six small ones, the SHA-256 of the RGB samples or `error`. The Rust test makes the same mutants with the same generator (`mutant`
below). The API matters, not only the library: libjpeg-turbo's fast Huffman path (the one the
patch changes) needs the data buffered ahead, which TurboJPEG's in-memory source always has and
djpeg's 4 KiB stdio buffer mostly has not; on corrupt data the two paths warn differently.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
VALID = os.path.join(ROOT, "tests", "corpus", "valid")
OUT = os.path.join(HERE, "jpeg-decode-sha256.tsv")
# Restart intervals (DRI; every MCU row of a 4:2:0 photo, every 3 MCUs of a grayscale one): made
# from two corpus files with upstream's `jpegtran -copy none -restart 1` and `-restart 3B`. The
# fast path runs between restart markers, so these cover its backing out at each marker.
RESTART = ["data/jpeg-restart-rows.jpg", "data/jpeg-restart-mcus.jpg"]
# A small progressive file (upstream's `jpegtran -copy none -crop 512x512+240+400 -progressive`
# of jpeg-exif-orientation-8.jpg: the standard scan script, with DC and AC refinement scans),
# whose corruptions reach the changed progressive decoder (jdphuff.c) with invalid codes and
# runs; the corpus' progressive files are too large to corrupt 64 times in a test.
PROGRESSIVE = ["data/jpeg-progressive.jpg"]
MUTANT_BASES = ["jpeg-tiny-16x16.jpg", "jpeg-grayscale-512x512.jpg",
                "jpeg-exif-orientation-8.jpg"] + RESTART + PROGRESSIVE
MUTANTS = 64
M64 = (1 << 64) - 1


def mutant(data, k):
    """Corruption k of data: 1-2 bytes set at random past its first quarter (mostly entropy-coded
    data), by a 64-bit LCG seeded with k + 1. The Rust test's `mutant` is the same function."""
    state = k + 1

    def nxt():
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) & M64
        return state >> 33

    d = bytearray(data)
    start = len(d) // 4
    for _ in range(1 + nxt() % 2):
        pos = start + nxt() % (len(d) - start - 2)
        d[pos] = nxt() % 256
    return bytes(d)


def source(name):
    """A fixture name's file: under tests/ when it has a directory, else a corpus file."""
    return os.path.join(ROOT, "tests", name) if "/" in name else os.path.join(VALID, name)


def upstream_tjdecode(tmp):
    src = os.path.join(tmp, "libjpeg-turbo")
    shutil.copytree(os.path.join(ROOT, "vendor", "turbojpeg-sys", "libjpeg-turbo"), src)
    patch = os.path.join(ROOT, "vendor", "turbojpeg-sys", "imgedge-huffman.patch")
    subprocess.run(["patch", "-R", "-p1", "-d", tmp, "-i", patch], check=True)
    build = os.path.join(tmp, "build")
    os.makedirs(build)
    subprocess.run(["cmake", "-DCMAKE_BUILD_TYPE=Release", "-DENABLE_SHARED=0", src], cwd=build,
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["make", f"-j{os.cpu_count()}", "turbojpeg-static"], cwd=build, check=True,
                   stdout=subprocess.DEVNULL)
    exe = os.path.join(tmp, "tjdecode")
    subprocess.run(["cc", "-O2", "-I", os.path.join(src, "src"), "-I", build, "-o", exe,
                    os.path.join(HERE, "tjdecode.c"), os.path.join(build, "libturbojpeg.a")],
                   check=True)
    return exe


def decoded(tjdecode, data, eighths):
    """'WxH' and the SHA-256 of the RGB samples upstream makes of data at eighths/8, or 'error'."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(data)
        f.flush()
        p = subprocess.run([tjdecode, f.name, str(eighths)], capture_output=True)
    if p.returncode != 0:
        return "error"
    size, samples = p.stdout.split(b"\n", 1)
    w, h = map(int, size.split(b"x"))
    assert len(samples) == w * h * 3, (w, h, len(samples))
    return f"{w}x{h} " + hashlib.sha256(samples).hexdigest()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tjdecode = os.environ.get("TJDECODE") or upstream_tjdecode(tmp)
        rows = []
        names = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(VALID, "jpeg-*.jpg")))]
        for name in names + RESTART + PROGRESSIVE:
            if "cmyk" in name:
                continue  # decoded as CMYK, not RGB
            data = open(source(name), "rb").read()
            for e in (1, 2, 4, 8):
                rows.append(f"{name}\t{e}\t{decoded(tjdecode, data, e)}")
        for name in MUTANT_BASES:
            data = open(source(name), "rb").read()
            for k in range(MUTANTS):
                e = (1, 2, 4, 8)[k % 4]
                rows.append(f"{name}#{k}\t{e}\t{decoded(tjdecode, mutant(data, k), e)}")
    with open(OUT, "w") as f:
        f.write("# tests/data/make_jpeg_decode_hashes.py: file[#mutant], eighths, upstream decode\n")
        f.write("\n".join(rows) + "\n")
    errors = sum(r.endswith("\terror") for r in rows)
    print(f"{len(rows)} decodes ({errors} errors) -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
