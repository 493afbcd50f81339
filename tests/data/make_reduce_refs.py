#!/usr/bin/env python3
"""libvips 8.18's downsizes of two small images: the fixtures of src/origin/transform/reduce.rs'
tests, which must reproduce them sample for sample.

    ~/.cache/imgedge-vs-libvips/bin/python tests/data/make_reduce_refs.py   # pyvips + pyvips-binary 8.18

Each reference is what vips_thumbnail does after loading, for a target width W:

    img.resize(1.0 / (img.width / W), kernel="lanczos3")

(thumbnail's shrink is width / W, passed to vips_resize as its inverse; resize's default gap of 2
box-shrinks first when the factor is 4 or more).
"""

import os

import pyvips

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus", "valid")

photo = pyvips.Image.new_from_file(os.path.join(CORPUS, "jpeg-baseline-2560x1600.jpg"))
rgb = photo.resize(120 / photo.width, kernel="lanczos3")  # 120x75, a real photo's detail
grey = rgb.colourspace("b-w").crop(40, 20, 37, 23)  # 37x23, odd sizes on both axes

for name, img, widths in [("rgb", rgb, [71, 53, 30, 24, 13, 5, 1]), ("grey", grey, [30, 5])]:
    src = os.path.join(HERE, f"reduce-{name}-{img.width}x{img.height}.png")
    img.pngsave(src, compression=9, keep="none")
    img = pyvips.Image.new_from_file(src)
    for w in widths:
        out = img.resize(1.0 / (img.width / w), kernel="lanczos3")
        out.pngsave(os.path.join(HERE, f"reduce-{name}-{img.width}x{img.height}-to-{w}.png"),
                    compression=9, keep="none")
