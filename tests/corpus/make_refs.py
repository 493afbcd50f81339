#!/usr/bin/env python3
"""Reference thumbnails for tests/corpus.rs, computed independently of imgedge with Pillow
(libjpeg, zlib, libwebp, LittleCMS for ICC).

For every valid/ file Pillow supports: first frame, EXIF orientation applied, ICC profile
converted to sRGB, CMYK to RGB, then fitted inside a 256x256 box with Lanczos in premultiplied
alpha, written as ref/<file>.png (RGB or RGBA). Files with an ICC profile also get
ref/<file>.unmanaged.png (the same without colour management) so the test can show its
threshold tells managed from unmanaged output.

Run (once, when the corpus changes):
    python3 -m venv /tmp/refs && /tmp/refs/bin/pip install pillow
    /tmp/refs/bin/python tests/corpus/make_refs.py
"""

import io
import os
import sys

from PIL import Image, ImageCms, ImageOps

BOX = 256
HERE = os.path.dirname(os.path.abspath(__file__))


def fitted(img):
    w, h = img.size
    s = min(BOX / w, BOX / h, 1.0)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == img.size:
        return img
    if img.mode == "RGBA":
        return img.convert("RGBa").resize(size, Image.LANCZOS).convert("RGBA")
    return img.resize(size, Image.LANCZOS)


def load(path, managed):
    img = Image.open(path)
    img.seek(0)
    icc = img.info.get("icc_profile")
    img = ImageOps.exif_transpose(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if managed and icc and img.mode in ("RGB", "RGBA"):
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        img = ImageCms.profileToProfile(img, src, dst, outputMode=img.mode)
    elif img.mode.startswith("I;16") or img.mode == "I":
        img = img.convert("I").point(lambda v: v / 257).convert("L")
    img = img.convert("RGBA" if has_alpha else "RGB")
    return img, icc


def main():
    out = os.path.join(HERE, "ref")
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(HERE, "valid"))):
        path = os.path.join(HERE, "valid", name)
        try:
            img, icc = load(path, True)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"skip {name}: {e}", file=sys.stderr)
            continue
        fitted(img).save(os.path.join(out, name + ".png"))
        if icc and img.mode in ("RGB", "RGBA"):
            plain, _ = load(path, False)
            fitted(plain).save(os.path.join(out, name + ".unmanaged.png"))
        print(name, img.mode, img.size)


if __name__ == "__main__":
    main()
