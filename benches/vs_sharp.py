#!/usr/bin/env python3
"""The driver and report of benches/vs_sharp.sh (misses: imgedge vs a sharp server).

  lists DIR                       write DIR/<case>.txt, one URL path per line (CASES below)
  run LABEL BASE URLS PID CONNS OUT
                                  request every URL once over CONNS keep-alive connections,
                                  sample the server's CPU (its process tree, /proc) around it,
                                  append one JSON line to OUT
  report OUT ORIG                 print the table: misses per server CPU-second (median of the
                                  rounds), the ratios, SSIM against a reference, p50/p99, errors

Every request must be a 200 image/jpeg; imgedge's must also be an `X-Cache: MISS` (a hit would
flatter it). The first answer of each case is kept as OUT.<server>.<case>.jpg: the report checks the servers
made the same size and measures each one's quality.
"""

import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from loadrun import TCK, cpu_ticks, tree  # noqa: E402
from trace import zipf_misses  # noqa: E402

# case -> (description, URL paths). The originals are made by benches/peers/sharp.js.
CASES = {
    "2mp-400": ("2 MP 1414² → 400w, all distinct (shrink 3.5)",
                [f"/image/sq{i:03d}.jpg?size=400x" for i in range(300)]),
    "12mp-400": ("12 MP → 400w, all distinct",
                 [f"/image/big{i:03d}.jpg?size=400x" for i in range(96)]),
    "12mp-1200": ("12 MP → 1200w, all distinct (shrink 3.3)",
                  [f"/image/big{i:03d}.jpg?size=1200x" for i in range(96)]),
    "zipf": ("Zipf trace's misses: 653 distinct (id, width) of 50,000 requests over 60 2 MP ids",
             [f"/image/z{i:02d}.jpg?size={w}x" for i, w in zipf_misses()]),
}


def lists(d):
    os.makedirs(d, exist_ok=True)
    for case, (_, urls) in CASES.items():
        with open(os.path.join(d, f"{case}.txt"), "w") as f:
            f.write("\n".join(urls) + "\n")


def tree_cpu(pid):
    return sum(cpu_ticks(p) or 0 for p in tree(pid)) / TCK


def run(label, base, urls_path, pid, conns, out):
    urls = [u for u in open(urls_path).read().split("\n") if u]
    host = urlsplit(base)
    lock, nxt = threading.Lock(), iter(range(len(urls)))
    lat, errors, not_miss, first = [], [], [0], {}

    def worker():
        c = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            t = time.perf_counter()
            c.request("GET", urls[i])
            r = c.getresponse()
            body = r.read()
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                if r.status != 200 or r.getheader("content-type") != "image/jpeg":
                    errors.append(f"{urls[i]}: {r.status} {body[:80]!r}")
                if r.getheader("x-cache") not in (None, "MISS"):
                    not_miss[0] += 1
                if i == 0:
                    first["body"] = body
        c.close()

    cpu0, t0 = tree_cpu(pid), time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, tree_cpu(pid) - cpu0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
    server, case = label.split("/")[0], label.split("/")[1].split("#")[0]
    res = {"label": label, "server": server, "case": case, "n": len(urls), "cpu_s": cpu,
           "wall_s": wall, "per_cpu": len(urls) / cpu if cpu else 0.0, "rps": len(urls) / wall,
           "p50_ms": q(0.5), "p99_ms": q(0.99), "errors": len(errors), "not_miss": not_miss[0]}
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")
    if "body" in first:
        with open(f"{out}.{server}.{case}.jpg", "wb") as f:
            f.write(first["body"])
    print(f"  {label:<22} {res['per_cpu']:7.1f} img/CPU-s  {res['rps']:6.1f} img/s  "
          f"cpu {cpu:5.2f}s  p50 {res['p50_ms']:6.1f} ms  p99 {res['p99_ms']:6.1f} ms  "
          f"errors {len(errors)}  not-miss {not_miss[0]}")
    for e in errors[:3]:
        print(f"    {e}", file=sys.stderr)


def report(out, orig):
    """The table; SSIM needs numpy and Pillow (vs_sharp.sh runs this in vs_libvips.sh's venv)."""
    import numpy as np
    from PIL import Image
    from vs_libvips import ssim

    rows = [json.loads(line) for line in open(out)]
    servers = sorted({r["server"] for r in rows}, key=lambda s: (not s.startswith("imgedge"), s))
    print("| case | server | img per server CPU-s: median (rounds) | vs sharp | vs sharp exact "
          "| SSIM vs reference | img/s | p50 / p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    bad = False
    for case, (desc, urls) in CASES.items():
        med = {}
        for server in servers:
            rs = sorted((r for r in rows if r["server"] == server and r["case"] == case),
                        key=lambda r: r["per_cpu"])
            if rs:
                med[server] = (rs[len(rs) // 2], [r["per_cpu"] for r in rs],
                               sum(r["errors"] + r["not_miss"] for r in rs))
        # Quality of each server's first answer against the same size made from the full
        # decode with Pillow's Lanczos, never encoded.
        src = Image.open(os.path.join(orig, urls[0].split("/")[-1].split("?")[0])).convert("RGB")
        widths = set()
        for k, server in enumerate(med):
            m, rounds, errs = med[server]
            got = np.asarray(Image.open(f"{out}.{server}.{case}.jpg").convert("RGB"))
            ref = np.asarray(src.resize((got.shape[1], got.shape[0]), Image.LANCZOS))
            widths.add(got.shape[1])
            bad |= errs > 0
            ratio = lambda peer: (f"{m['per_cpu'] / med[peer][0]['per_cpu']:.2f}x"  # noqa: E731
                                  if peer in med and server.startswith("imgedge") else "")
            print(f"| {desc if k == 0 else ''} | {server} | {m['per_cpu']:.1f} "
                  f"({', '.join(f'{x:.1f}' for x in rounds)}) | {ratio('sharp')} "
                  f"| {ratio('sharp-exact')} | {ssim(got, ref):.4f} | {m['rps']:.1f} "
                  f"| {m['p50_ms']:.1f} / {m['p99_ms']:.1f} | {errs} |")
        bad |= len(widths) > 1
    if bad:
        sys.exit("errors, hits or different output sizes: the figures above are not comparable")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "lists":
        lists(*args)
    elif cmd == "run":
        run(args[0], args[1], args[2], int(args[3]), int(args[4]), args[5])
    elif cmd == "report":
        report(args[0], args[1])
    else:
        sys.exit(__doc__)
