#!/usr/bin/env python3
"""Cluster load client for benches/load.sh's `cluster` run: replays a trace over several nodes
(each request to a node picked at random, as a load balancer would), then purges, and prints one
table row of what the POP did.

    benches/cluster_load.py --label cluster --edges URL,URL,URL --admins URL,URL,URL \
        --trace trace.txt --conns 8 --token TOKEN --purges 20

Per request it reads `X-Cache` and `X-Cache-Peer` (see README "Cluster"): a local hit is
`X-Cache: HIT`; a peer fill is `X-Cache: MISS` with `X-Cache-Peer: <owner> HIT` (the owner had
it: a POP hit) or `<owner> MISS` (the owner made it); a plain MISS was made here. Source fetches
and resizes come from the nodes' own counters (`imgedge_source_fetches_total`,
`imgedge_transforms_total`), before and after. Purges go to the nodes' admins in turn; their
latency is the admin's answer (request to the last node's confirmation in a cluster) measured
here, and the nodes' `imgedge_cluster_purge_duration_seconds` where exported.
"""

import argparse
import http.client
import json
import random
import re
import threading
import time
import urllib.parse
import urllib.request

AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Googlebot-Image/1.0",
    "curl/8.5.0",
]


def scrape(admin, names):
    """Sum of each metric in `names` over all its label sets on one node."""
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    out = {n: 0.0 for n in names}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})?\s+(\S+)$", line)
        if m and m.group(1) in out:
            out[m.group(1)] += float(m.group(3))
    return out


METRICS = [
    "imgedge_source_fetches_total",
    "imgedge_transforms_total",
    "imgedge_cluster_purge_duration_seconds_sum",
    "imgedge_cluster_purge_duration_seconds_count",
]


def totals(admins):
    t = {n: 0.0 for n in METRICS}
    for a in admins:
        for k, v in scrape(a, METRICS).items():
            t[k] += v
    return t


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--edges", required=True, help="comma-separated edge base URLs")
    ap.add_argument("--admins", required=True, help="comma-separated admin base URLs, same order")
    ap.add_argument("--trace", required=True)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--token", default="")
    ap.add_argument("--purges", type=int, default=20)
    ap.add_argument("--header", action="store_true", help="print the table header first")
    a = ap.parse_args()
    edges = [urllib.parse.urlsplit(e) for e in a.edges.split(",")]
    admins = a.admins.split(",")
    paths = [p for p in open(a.trace).read().split("\n") if p.startswith("/")]
    rnd = random.Random(a.seed)
    plan = [(p, rnd.randrange(len(edges)), rnd.randrange(len(AGENTS))) for p in paths]

    before = totals(admins)
    lock = threading.Lock()
    nxt = [0]
    classes = {"local_hit": [], "peer_hit": [], "peer_miss": [], "local_miss": [], "other": []}
    errors = [0]

    def worker():
        conns = {}
        mine = {k: [] for k in classes}
        errs = 0
        while True:
            with lock:
                k = nxt[0]
                nxt[0] += 1
            if k >= len(plan):
                break
            path, node, ua = plan[k]
            e = edges[node]
            for attempt in range(2):
                c = conns.get(node)
                if c is None:
                    c = conns[node] = http.client.HTTPConnection(e.hostname, e.port, timeout=30)
                try:
                    t0 = time.perf_counter()
                    c.request("GET", path, headers={"User-Agent": AGENTS[ua]})
                    r = c.getresponse()
                    r.read()
                    dt = time.perf_counter() - t0
                    break
                except (http.client.HTTPException, OSError):
                    c.close()
                    conns.pop(node, None)
                    r = None
            if r is None:
                errs += 1
                continue
            xc = r.getheader("X-Cache", "")
            peer = r.getheader("X-Cache-Peer")
            if r.status != 200:
                errs += 1
            elif xc == "HIT":
                mine["local_hit"].append(dt)
            elif xc == "MISS" and peer:
                mine["peer_hit" if peer.endswith(" HIT") else "peer_miss"].append(dt)
            elif xc == "MISS":
                mine["local_miss"].append(dt)
            else:
                mine["other"].append(dt)
        with lock:
            for k, v in mine.items():
                classes[k].extend(v)
            errors[0] += errs

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    after = totals(admins)

    # Purges: the most requested ids first, through each node in turn.
    ids = {}
    for p, _, _ in plan:
        m = re.match(r"^/image/([^?]+)", p)
        if m:
            ids[m.group(1)] = ids.get(m.group(1), 0) + 1
    hot = sorted(ids, key=ids.get, reverse=True)[: a.purges]
    purge_ms, confirmed = [], 0
    for i, img in enumerate(hot):
        u = urllib.parse.urlsplit(admins[i % len(admins)])
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        t0 = time.perf_counter()
        c.request("POST", "/purge/image/" + img, headers={"Authorization": "Bearer " + a.token})
        r = c.getresponse()
        body = r.read()
        purge_ms.append((time.perf_counter() - t0) * 1000)
        c.close()
        if r.status == 200:
            try:
                ans = json.loads(body)
            except ValueError:
                ans = {}
            # A node alone answers without a node list: it is its own confirmation.
            if ans.get("all_confirmed", "nodes" not in ans):
                confirmed += 1
    purged = totals(admins)

    n = sum(len(v) for v in classes.values())
    pop_hits = len(classes["local_hit"]) + len(classes["peer_hit"])
    hits = classes["local_hit"]
    peers = classes["peer_hit"]
    ms = lambda v, p: "-" if not v else "%.2f" % (pct(v, p) * 1000)
    cnt = purged["imgedge_cluster_purge_duration_seconds_count"] - after["imgedge_cluster_purge_duration_seconds_count"]
    metric_mean = (
        "%.1f" % ((purged["imgedge_cluster_purge_duration_seconds_sum"] - after["imgedge_cluster_purge_duration_seconds_sum"]) / cnt * 1000)
        if cnt > 0
        else "-"
    )
    if a.header:
        print(
            "| run | requests | req/s | source fetches | resizes | local hits | peer fills (owner HIT / MISS) | POP hit ratio "
            "| local hit p50 / p99 ms | peer fill (owner HIT) p50 / p99 ms | misses made here | errors "
            "| purges confirmed | purge p50 / max ms (admin answer) | purge mean ms (metric) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        "| %s | %d | %.0f | %d | %d | %d | %d / %d | %.1f%% | %s / %s | %s / %s | %d | %d | %d/%d | %.1f / %.1f | %s |"
        % (
            a.label,
            n,
            n / elapsed,
            after["imgedge_source_fetches_total"] - before["imgedge_source_fetches_total"],
            after["imgedge_transforms_total"] - before["imgedge_transforms_total"],
            len(hits),
            len(peers),
            len(classes["peer_miss"]),
            100.0 * pop_hits / max(n, 1),
            ms(hits, 0.5),
            ms(hits, 0.99),
            ms(peers, 0.5),
            ms(peers, 0.99),
            len(classes["local_miss"]),
            errors[0],
            confirmed,
            len(hot),
            pct(purge_ms, 0.5) if purge_ms else float("nan"),
            max(purge_ms) if purge_ms else float("nan"),
            metric_mean,
        )
    )


if __name__ == "__main__":
    main()
