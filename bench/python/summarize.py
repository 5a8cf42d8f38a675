"""Markdown tables from bench/out/python.jsonl: median over rounds per client and cell, and
each weft client's ratio to the best of the other clients (< 1 is better for times).
`raw-socket` (no library: the floor of a blocking client) is shown but is not a peer.

usage: python summarize.py python.jsonl"""

import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    row = json.loads(line)
    r = row["result"]
    if r.get("error"):
        continue
    runs[row["cell"], r["client"]].append(r)

cells = list(dict.fromkeys(c for c, _ in runs))


def med(rs, key):
    vals = [r[key] for r in rs if key in r]
    return statistics.median(vals) if vals else None


for cell in cells:
    clients = [c for (k, c) in runs if k == cell]
    rr = "--mode rr" in cell
    key = "rtt_median_us" if rr else "batch_ms"
    vals = {c: med(runs[cell, c], key) for c in clients}
    best_peer = min(v for c, v in vals.items() if not c.startswith(("weft", "raw-")) and v is not None)
    print(f"\n### {cell.replace('--', '').strip()}\n")
    if rr:
        print("| client | RTT median µs | RTT p99 µs | median ÷ best other |")
        print("|---|---:|---:|---:|")
    else:
        print("| client | send ms | receive ms | total ms per 1,000 | total ÷ best other |")
        print("|---|---:|---:|---:|---:|")
    for c in sorted(clients, key=lambda c: vals[c]):
        rs = runs[cell, c]
        ratio = f"{vals[c] / best_peer:.2f}"
        if rr:
            print(f"| {c} | {vals[c]:.1f} | {med(rs, 'rtt_p99_us'):.1f} | {ratio} |")
        else:
            s, r = med(rs, "send_ms"), med(rs, "recv_ms")
            fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"| {c} | {fmt(s)} | {fmt(r)} | {vals[c]:.2f} | {ratio} |")
