#!/usr/bin/env python3
"""libvips' half of the comparison, and the report. Driven by benches/vs_libvips.sh.

  prepare DIR   make the inputs from the repo's corpus (tests/corpus) and DIR/cases.tsv
  libvips DIR   time libvips (pyvips, VIPS_CONCURRENCY=1, cache off) on every case
  report DIR    print the table: images per CPU-second, ratio, SSIM(imgedge, libvips), and
                for JPEG inputs the Huffman-decode floor (a 1/8-scale decode, timed by the
                imgedge side with the same libjpeg-turbo) next to imgedge's time per image

libvips does what imgproxy/sharp do: thumbnail_buffer (shrink-on-load for JPEG, then a
Lanczos-class reduce), then save with the same settings imgedge uses: JPEG Q80 4:2:0, WebP
Q80, PNG at zlib level 1 (imgedge's "fast" level is comparable); metadata stripped.
"""

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "tests", "corpus", "valid")

# name, input, imgedge query, libvips target width, output suffix
CASES = [
    ("12mp-jpeg-400", "in-12mp.jpg", "size=400x", 400, ".jpg"),
    ("2mp-jpeg-400", "in-2mp.jpg", "size=400x", 400, ".jpg"),
    ("2mp-jpeg-1200", "in-2mp.jpg", "size=1200x", 1200, ".jpg"),
    # The peer bench's kind of 2 MP input: 1414x1414, shrink 3.5 to 400 px (between 3 and 4:
    # libvips decodes in full, imgedge at 1/2).
    ("2mp-square-jpeg-400", "in-2mp-square.jpg", "size=400x", 400, ".jpg"),
    ("12mp-jpeg-1200", "in-12mp.jpg", "size=1200x", 1200, ".jpg"),
    ("2mp-png-400", "in-2mp.png", "size=400x", 400, ".png"),
    ("2mp-jpeg-400-webp", "in-2mp.jpg", "size=400x&format=webp", 400, ".webp"),
    # Not one of the cases: a dense, sharp landscape (more entropy to decode, and
    # JPEG/WebP noise that lowers any SSIM between two encodes), to show the spread.
    ("2mp-textured-jpeg-400", "in-2mp-textured.jpg", "size=400x", 400, ".jpg"),
    # Not issue cases either: where the WebP row's SSIM goes. The same resize with a lossless
    # output shows how far the two engines' pixels are apart before any lossy encoder; libvips'
    # own 400w pixels, encoded by both sides (no resize), show whether the encoders agree.
    ("2mp-jpeg-400-lossless", "in-2mp.jpg", "size=400x&format=png", 400, ".png"),
    ("webp-encoder-only", "in-2mp-vips400.png", "size=400x&format=webp", 400, ".webp"),
    # Modern outputs (issue 16): WebP and AVIF at 400 and 1200 px from both inputs. AVIF at
    # matched settings: imgedge's default q (80) maps to AVIF quality AVIF_Q (the measured
    # mapping, README "Formats"), and libheif's aom plugin maps Q to the quantizer as libavif
    # does; libaom speed 8 = libvips effort 1 (effort = 9 - cpu-used); 4:2:0 both.
    ("2mp-webp-400", "in-2mp.jpg", "size=400x&format=webp", 400, ".webp"),
    ("2mp-webp-1200", "in-2mp.jpg", "size=1200x&format=webp", 1200, ".webp"),
    ("12mp-webp-400", "in-12mp.jpg", "size=400x&format=webp", 400, ".webp"),
    ("12mp-webp-1200", "in-12mp.jpg", "size=1200x&format=webp", 1200, ".webp"),
    ("2mp-avif-400", "in-2mp.jpg", "size=400x&format=avif", 400, ".avif"),
    ("2mp-avif-1200", "in-2mp.jpg", "size=1200x&format=avif", 1200, ".avif"),
    ("12mp-avif-400", "in-12mp.jpg", "size=400x&format=avif", 400, ".avif"),
    ("12mp-avif-1200", "in-12mp.jpg", "size=1200x&format=avif", 1200, ".avif"),
]
# imgedge's AVIF quality at q=80 (src/origin/transform/encode.rs avif_quality).
AVIF_Q = int(os.environ.get("AVIF_Q", "62"))
# The Zipf trace's misses (benches/trace.py's zipf_misses). Every id is a 2 MP product photo
# (in-2mp.jpg; libvips caches nothing between calls, imgedge keys its mezzanines by id, as the
# server does by id and ETag).
from trace import MISS_IDS as TRACE_IDS, MISS_REQUESTS as TRACE_REQUESTS, zipf_misses  # noqa: E402,E501

SAVE = {".jpg": dict(Q=80, subsample_mode="on", keep="none"),
        ".webp": dict(Q=80, keep="none"),
        ".png": dict(compression=1, keep="none"),
        ".avif": dict(Q=AVIF_Q, compression="av1", effort=1, subsample_mode="on", keep="none")}
EXT = {".jpg": "jpeg", ".webp": "webp", ".png": "png", ".avif": "avif"}


def load_rgb(path):
    """An output as an RGB array (pyvips for AVIF: Pillow may lack the plugin)."""
    if path.endswith(".avif"):
        import pyvips
        img = pyvips.Image.new_from_file(path, access="sequential")
        arr = np.ndarray(buffer=img.write_to_memory(), dtype=np.uint8,
                         shape=[img.height, img.width, img.bands])
        return arr[..., :3] if img.bands >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def prepare(d):
    import pyvips
    os.makedirs(d, exist_ok=True)
    big = pyvips.Image.new_from_file(os.path.join(CORPUS, "jpeg-large-13.4mp-4224x3168.jpg"))
    # 12 MP (4000x3000) baseline camera-like JPEG, from a real 13.4 MP photo.
    big.crop((big.width - 4000) // 2, (big.height - 3000) // 2, 4000, 3000).jpegsave(
        os.path.join(d, "in-12mp.jpg"), Q=90, subsample_mode="on", keep="none")
    # 2 MP (1790x1119): a camera photo (Olympus E-M1, the corpus' baseline JPEG) downsized the
    # way a site's upload pipeline would, saved at Q90 4:2:0.
    kite = pyvips.Image.new_from_file(os.path.join(CORPUS, "jpeg-baseline-2560x1600.jpg"))
    two = kite.resize(1790 / kite.width, kernel="lanczos3")
    two.jpegsave(os.path.join(d, "in-2mp.jpg"), Q=90, subsample_mode="on", keep="none")
    two.pngsave(os.path.join(d, "in-2mp.png"), compression=6, keep="none")
    side = min(kite.width, kite.height)
    square = kite.crop((kite.width - side) // 2, (kite.height - side) // 2, side, side)
    square.resize(1414 / side, kernel="lanczos3").jpegsave(
        os.path.join(d, "in-2mp-square.jpg"), Q=90, subsample_mode="on", keep="none")
    jpeg = open(os.path.join(d, "in-2mp.jpg"), "rb").read()
    pyvips.Image.thumbnail_buffer(jpeg, 400, height=10_000_000, size="down").pngsave(
        os.path.join(d, "in-2mp-vips400.png"), compression=1, keep="none")
    mid = pyvips.Image.new_from_file(os.path.join(CORPUS, "jpeg-progressive-3088x2056.jpg"))
    tex = mid.resize(1732 / mid.width, kernel="lanczos3")  # 1732x1153
    tex.jpegsave(os.path.join(d, "in-2mp-textured.jpg"), Q=90, subsample_mode="on", keep="none")
    misses = zipf_misses()
    with open(os.path.join(d, "trace.tsv"), "w") as f:
        for i, w in misses:
            f.write(f"id{i}\tin-2mp.jpg\tsize={w}x\t{w}\n")
    with open(os.path.join(d, "cases.tsv"), "w") as f:
        for name, inp, query, _, _ in CASES:
            f.write(f"{name}\t{inp}\t{query}\n")


def libvips(d, budget):
    import pyvips
    pyvips.cache_set_max(0)
    rows = []
    for name, inp, _, width, suffix in CASES:
        data = open(os.path.join(d, inp), "rb").read()

        def once():
            img = pyvips.Image.thumbnail_buffer(data, width, height=10_000_000, size="down")
            return img.write_to_buffer(suffix, **SAVE[suffix])

        out = once()
        once()
        n, start = 0, time.process_time()
        while time.process_time() - start < budget or n < 5:
            once()
            n += 1
        per = (time.process_time() - start) / n
        open(os.path.join(d, f"{name}.libvips.{EXT[suffix]}"), "wb").write(out)
        print(f"{name:<22} {per * 1e3:8.2f} ms/img  {1 / per:7.1f} img/cpu-s  (libvips)")
        rows.append(f"{name}\t{per}\t{len(out)}\n")
    open(os.path.join(d, "libvips.tsv"), "w").write("".join(rows))
    trace = [l.rstrip("\n").split("\t") for l in open(os.path.join(d, "trace.tsv"))]
    inputs = {inp: open(os.path.join(d, inp), "rb").read() for _, inp, _, _ in trace}
    start = time.process_time()
    for _, inp, _, w in trace:
        img = pyvips.Image.thumbnail_buffer(inputs[inp], int(w), height=10_000_000, size="down")
        img.write_to_buffer(".jpg", **SAVE[".jpg"])
    per = (time.process_time() - start) / len(trace)
    print(f"{'zipf-trace-misses':<22} {per * 1e3:8.2f} ms/img  {1 / per:7.1f} img/cpu-s  (libvips)")
    open(os.path.join(d, "libvips-trace.tsv"), "w").write(f"{len(trace)}\t{per}\n")


def ssim(a, b):
    """Mean SSIM over 7x7 uniform windows on each RGB channel (scikit-image's defaults)."""
    def box(x):
        c = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), 0), 1)
        return (c[7:, 7:] - c[:-7, 7:] - c[7:, :-7] + c[:-7, :-7]) / 49.0
    c1, c2, k = (0.01 * 255) ** 2, (0.03 * 255) ** 2, 49 / 48
    vals = []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = box(x), box(y)
        vx, vy = (box(x * x) - mx * mx) * k, (box(y * y) - my * my) * k
        cov = (box(x * y) - mx * my) * k
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def report(d):
    from PIL import Image
    mine = {l.split("\t")[0]: l.rstrip("\n").split("\t") for l in open(os.path.join(d, "imgedge.tsv"))}
    vips = {l.split("\t")[0]: l.rstrip("\n").split("\t") for l in open(os.path.join(d, "libvips.tsv"))}
    print()
    print("| case | imgedge img/CPU-s | libvips img/CPU-s | ratio | SSIM imgedge vs libvips "
          "| SSIM vs reference: imgedge / libvips | bytes imgedge / libvips | size "
          "| imgedge ms / 1/8-decode floor ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, inp, _, _, suffix in CASES:
        m, v = mine[name], vips[name]
        a = load_rgb(os.path.join(d, f"{name}.imgedge.{EXT[suffix]}"))
        b = load_rgb(os.path.join(d, f"{name}.libvips.{EXT[suffix]}"))
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        s = ssim(a[:h, :w], b[:h, :w])
        # Quality on an absolute scale: each output against a full-size decode of the input
        # resized with Pillow's Lanczos, never encoded.
        ref = np.asarray(Image.open(os.path.join(d, inp)).convert("RGB").resize(
            (a.shape[1], a.shape[0]), Image.LANCZOS))
        ra, rb = ssim(a, ref), ssim(b[:a.shape[0], :a.shape[1]], ref[:b.shape[0], :b.shape[1]])
        rm, rv = 1 / float(m[1]), 1 / float(v[1])
        floor = f"{float(m[1]) * 1e3:.2f} / {float(m[4]) * 1e3:.2f}" if m[4] != "-" else "-"
        print(f"| {name} | {rm:.1f} | {rv:.1f} | {rm / rv:.2f}x | {s:.4f} | {ra:.4f} / {rb:.4f} "
              f"| {m[2]} / {v[2]} | {m[3]} vs {b.shape[1]}x{b.shape[0]} | {floor} |")


def report_trace(d):
    from PIL import Image
    n, vips = open(os.path.join(d, "libvips-trace.tsv")).read().split()
    mine = dict(l.rstrip("\n").split("\t") for l in open(os.path.join(d, "imgedge-trace.tsv")))
    direct, mezz, decodes = float(mine["direct"]), float(mine["mezzanine"]), mine["decodes"]
    # Quality: every output of both against a direct resize of the full decode (Pillow's
    # Lanczos, never encoded), and the mezzanine's against imgedge's direct output.
    src = Image.open(os.path.join(d, "in-2mp.jpg")).convert("RGB")
    refs, worst = {}, {"mezzanine": 1.0, "direct": 1.0, "pair": 1.0}
    # Every 4th miss (SSIM in numpy is slow on 1600 px outputs): all sizes still occur.
    for k in range(0, int(n), 4):
        a = np.asarray(Image.open(os.path.join(d, f"trace-{k}.mezzanine.jpg")).convert("RGB"))
        b = np.asarray(Image.open(os.path.join(d, f"trace-{k}.direct.jpg")).convert("RGB"))
        if a.shape[0] < 7 or a.shape[1] < 7:
            continue
        key = (a.shape[1], a.shape[0])
        if key not in refs:
            refs[key] = np.asarray(src.resize(key, Image.LANCZOS))
        worst["mezzanine"] = min(worst["mezzanine"], ssim(a, refs[key]))
        worst["direct"] = min(worst["direct"], ssim(b, refs[key]))
        worst["pair"] = min(worst["pair"], ssim(a, b))
    print()
    print(f"Zipf trace misses ({n} distinct variants of {TRACE_REQUESTS} requests over "
          f"{TRACE_IDS} ids, 2 MP originals):")
    print("| | img/CPU-s | ratio to libvips |")
    print("|---|---:|---:|")
    print(f"| libvips (decode every miss) | {1 / float(vips):.1f} | 1.00x |")
    print(f"| imgedge, direct | {1 / direct:.1f} | {float(vips) / direct:.2f}x |")
    print(f"| imgedge + mezzanines ({decodes} decodes) | {1 / mezz:.1f} | {float(vips) / mezz:.2f}x |")
    print(f"lowest SSIM over every 4th of the {n} misses against a direct resize of the full decode: "
          f"mezzanine {worst['mezzanine']:.4f}, direct {worst['direct']:.4f}; "
          f"mezzanine vs direct output {worst['pair']:.4f}")


if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    budget = float(os.environ.get("VS_LIBVIPS_SECONDS", "2"))
    {"prepare": prepare, "libvips": lambda d: libvips(d, budget),
     "report": lambda d: (report(d), report_trace(d))}[cmd](d)
