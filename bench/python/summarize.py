"""Markdown tables (and an SVG chart) from bench/out/python.jsonl: the median over rounds per
client and cell, warm and cold, and each weft client's ratio to the best of its peers (< 1 is
better for times):

- `weft-sync`: against every other client (the goal: the fastest Python client);
- `weft-async` / `weft-async-uvloop`: against the other asyncio clients on the same loop;
- `weft-websockets-*` (weft's `websockets` drop-in): against `picows-websockets` on the same
  loop (its direct rival), and the sync drop-in against `websockets-sync`.

`raw-socket` (no library: the floor of a blocking client) is shown but is not a peer.

usage: python summarize.py python.jsonl [chart.svg]"""

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
SYNC = {"weft-sync", "weft-websockets-sync", "websocket-rs-sync", "websockets-sync", "websocket-client", "raw-socket"}


def med(rs, key):
    vals = [r[key] for r in rs if key in r]
    return statistics.median(vals) if vals else None


def loop(c: str) -> str:
    return "sync" if c in SYNC else ("uvloop" if c.endswith("-uvloop") else "asyncio")


def peers(c: str, clients: list[str]) -> list[str]:
    """Whom weft client `c` is measured against."""
    others = [o for o in clients if not o.startswith(("weft", "raw-"))]
    if c == "weft-sync":
        return others
    if c.startswith("weft-websockets"):
        rival = "websockets-sync" if c == "weft-websockets-sync" else "picows-websockets" + ("-uvloop" if c.endswith("-uvloop") else "")
        return [o for o in others if o == rival]
    return [o for o in others if loop(o) == loop(c)]


def ratio(v, c, clients, vals) -> str:
    best = [vals[o] for o in peers(c, clients) if vals.get(o) is not None]
    if v is None or not best or not c.startswith("weft"):
        return ""
    return f"{v / min(best):.2f}"


chart = []
for cell in cells:
    clients = [c for (k, c) in runs if k == cell]
    rr = "--mode rr" in cell
    key, cold_key = ("rtt_median_us", "cold_rtt_median_us") if rr else ("batch_ms", "cold_batch_ms")
    warm = {c: med(runs[cell, c], key) for c in clients}
    cold = {c: med(runs[cell, c], cold_key) for c in clients}
    print(f"\n### {cell.replace('--', '').strip()}\n")
    if rr:
        print("| client | loop | RTT median µs | p99 µs | cold RTT µs | ÷ best peer | cold ÷ best peer |")
        print("|---|---|---:|---:|---:|---:|---:|")
    else:
        print("| client | loop | send ms | receive ms | ms per 1,000 | cold ms | ÷ best peer | cold ÷ best peer |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    for c in sorted(clients, key=lambda c: warm[c]):
        rs = runs[cell, c]
        r1, r2 = ratio(warm[c], c, clients, warm), ratio(cold[c], c, clients, cold)
        if rr:
            print(f"| {c} | {loop(c)} | {warm[c]:.1f} | {med(rs, 'rtt_p99_us'):.1f} | {fmt(cold[c])} | {r1} | {r2} |")
        else:
            s, r = med(rs, "send_ms"), med(rs, "recv_ms")
            print(f"| {c} | {loop(c)} | {fmt(s)} | {fmt(r)} | {warm[c]:.2f} | {fmt(cold[c])} | {r1} | {r2} |")
    chart.append((cell.replace("--", "").strip(), "µs" if rr else "ms", sorted(((warm[c], c) for c in clients))))


def svg(path: str) -> None:
    """Horizontal bars, one panel per cell, weft's clients highlighted."""
    bar, gap, left, width = 14, 4, 190, 420
    out, y = [], 10
    for title, unit, rows in chart:
        out.append(f'<text x="10" y="{y + 12}" font-weight="bold">{title} ({unit}, lower is better)</text>')
        y += 20
        top = max(v for v, _ in rows)
        for v, c in rows:
            w = max(1, int(width * v / top))
            color = "#d9480f" if c.startswith("weft") else "#868e96"
            out.append(f'<text x="{left - 6}" y="{y + 11}" text-anchor="end">{c}</text>')
            out.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar}" fill="{color}"/>')
            out.append(f'<text x="{left + w + 4}" y="{y + 11}">{v:.1f}</text>')
            y += bar + gap
        y += 14
    with open(path, "w") as f:
        f.write(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" height="{y}" '
            f'font-family="sans-serif" font-size="11">\n' + "\n".join(out) + "\n</svg>\n"
        )


if len(sys.argv) > 2:
    svg(sys.argv[2])
