#!/usr/bin/env python3
"""Generate a request trace for benches/load.sh: one request path per line.

Popularity is Zipf over image ids and, independently, over sizes (a few thumbnail sizes carry
most traffic), the way image CDN logs look. Each line is written with the noise real clients
add and the cache key must ignore: shuffled parameter order, utm_* and cache-buster parameters,
`dpr` instead of a doubled size, `jpg` for `jpeg`. (User-Agent noise is added by load.lua.)

    benches/trace.py --ids 500 --requests 200000 --seed 1 > trace.txt
"""

import argparse
import random


def zipf_weights(n, s):
    return [1.0 / (k ** s) for k in range(1, n + 1)]


# The miss benches' trace (benches/vs_libvips.py, benches/vs_sharp.py): Zipf s=1.1 over MISS_IDS
# ids and weighted widths; its misses are the distinct (id, width) pairs of MISS_REQUESTS
# requests, in order of first request, so a hot id's later sizes follow its first.
MISS_IDS, MISS_REQUESTS = 60, 50000
MISS_WIDTHS = [(150, 30), (300, 20), (640, 12), (200, 16), (1024, 6), (400, 5), (480, 4),
               (800, 3), (64, 2), (1280, 1), (1600, 1)]


def zipf_misses(ids=MISS_IDS, requests=MISS_REQUESTS, widths=MISS_WIDTHS, s=1.1, seed=1):
    """The distinct (id index, width) pairs of a Zipf trace, in order of first request."""
    rnd = random.Random(seed)
    idx = list(range(ids))
    id_w = zipf_weights(ids, s)
    seen, misses = set(), []
    for _ in range(requests):
        v = (rnd.choices(idx, id_w)[0], rnd.choices(*zip(*widths))[0])
        if v not in seen:
            seen.add(v)
            misses.append(v)
    return misses


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=500, help="distinct image ids (img00000.jpg, ...)")
    p.add_argument("--requests", type=int, default=200000, help="lines to write")
    p.add_argument("--s", type=float, default=1.1, help="Zipf exponent over ids")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rnd = random.Random(a.seed)

    ids = [f"img{i:05d}.jpg" for i in range(a.ids)]
    # (params, weight): popular thumbnails first; a long tail of other sizes and formats.
    sizes = [
        ({"size": "150x150"}, 30),
        ({"size": "300x"}, 20),
        ({"size": "640x"}, 12),
        ({"size": "100x100", "dpr": "2"}, 10),  # the same variant as 200x200
        ({"size": "200x200"}, 6),
        ({"size": "1024x", "format": "webp"}, 6),
        ({"size": "400x300", "fit": "inside"}, 5),
        ({"size": "480x320", "q": "70"}, 4),
        ({"size": "800x", "format": "jpg"}, 3),
        ({"size": "64x64"}, 2),
        ({"size": "1280x720", "fit": "fill"}, 1),
        ({"size": "1600x"}, 1),
    ]
    id_w = zipf_weights(len(ids), a.s)
    size_params = [s for s, _ in sizes]
    size_w = [w for _, w in sizes]
    out = []
    for n in range(a.requests):
        img = rnd.choices(ids, id_w)[0]
        params = list(rnd.choices(size_params, size_w)[0].items())
        if rnd.random() < 0.3:
            params.append(("utm_source", rnd.choice(["newsletter", "twitter", "google", "app"])))
        if rnd.random() < 0.2:
            params.append(("utm_campaign", f"c{rnd.randrange(50)}"))
        if rnd.random() < 0.1:
            params.append(("cb", str(rnd.randrange(10**9))))
        rnd.shuffle(params)
        out.append(f"/image/{img}?" + "&".join(f"{k}={v}" for k, v in params))
    print("\n".join(out))


if __name__ == "__main__":
    main()
