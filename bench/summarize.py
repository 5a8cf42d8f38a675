"""Summarise bench/out/results.jsonl: median per server and cell, ratios to the best peer,
a markdown table, and an SVG chart of msg/s by size (no third-party packages).

usage: python3 bench/summarize.py results.jsonl summary.md chart.svg"""
import json
import statistics
import sys
from collections import defaultdict

src, md_out, svg_out = sys.argv[1:4]
runs = defaultdict(list)
for line in open(src):
    row = json.loads(line)
    r = row["result"]
    if "error" in r or not r.get("messages"):
        continue
    key = (r["size"], r["connections"], r["in_flight"], r["deflate"])
    runs[key, row["server"]].append(r)

def med(rs, f):
    vals = [r[f] for r in rs if r.get(f) is not None]
    return statistics.median(vals) if vals else None

cells = sorted({k for (k, _) in runs})
servers = sorted({s for (_, s) in runs}, key=lambda s: (not s.startswith("weft"), s))
lines = ["# Echo benchmark summary", "",
         "Median of rounds. `µs/msg` = server user+sys CPU per echoed message (lower is better);",
         "ratios compare weft with the best *peer* in the cell (msg/s: >1 is better; CPU: <1 is better).", ""]
chart = defaultdict(dict)
for cell in cells:
    size, conns, inflight, deflate = cell
    mode = "request-response" if inflight == 1 else f"{inflight} in flight"
    lines += [f"## {size} B, {conns} connections, {mode}{', permessage-deflate' if deflate else ''}", "",
              "| server | msg/s | server µs/msg | p50 µs | p99 µs | gen-bound |", "|---|---:|---:|---:|---:|---|"]
    stats = {}
    for s in servers:
        rs = runs.get((cell, s))
        if not rs:
            continue
        st = {f: med(rs, f) for f in ("msg_per_sec", "server_cpu_us_per_msg")}
        st["p50"] = statistics.median(r["rtt_us"]["p50"] for r in rs)
        st["p99"] = statistics.median(r["rtt_us"]["p99"] for r in rs)
        st["bound"] = any(r["generator_bound"] for r in rs)
        stats[s] = st
        if conns == 100 and inflight == 1 and not deflate:
            chart[s][size] = st["msg_per_sec"]
    for s, st in stats.items():
        cpu = f"{st['server_cpu_us_per_msg']:.2f}" if st["server_cpu_us_per_msg"] is not None else "n/a"
        lines.append(f"| {s} | {st['msg_per_sec']:.0f} | {cpu} | {st['p50']:.0f} | {st['p99']:.0f} | {'yes' if st['bound'] else ''} |")
    peers = {s: st for s, st in stats.items() if not s.startswith("weft")}
    ours = [s for s in stats if s.startswith("weft")]
    if peers and ours:
        w = stats[ours[0]]
        best_rate = max(peers.items(), key=lambda kv: kv[1]["msg_per_sec"])
        cpu_peers = {s: st for s, st in peers.items() if st["server_cpu_us_per_msg"]}
        lines.append("")
        lines.append(f"weft / best peer msg/s ({best_rate[0]}): **{w['msg_per_sec'] / best_rate[1]['msg_per_sec']:.2f}×**"
                     + (f"; weft / most efficient peer CPU per msg ({min(cpu_peers.items(), key=lambda kv: kv[1]['server_cpu_us_per_msg'])[0]}): "
                        f"**{w['server_cpu_us_per_msg'] / min(st['server_cpu_us_per_msg'] for st in cpu_peers.values()):.2f}×**"
                        if cpu_peers and w["server_cpu_us_per_msg"] else ""))
    lines.append("")
open(md_out, "w").write("\n".join(lines) + "\n")

# SVG grouped bar chart: msg/s by size, 100 connections, request-response, no deflate.
sizes = sorted({sz for d in chart.values() for sz in d})
names = [s for s in servers if s in chart]
if sizes and names:
    W, H, pad = 900, 420, 60
    top = max(v for d in chart.values() for v in d.values()) * 1.1
    gw = (W - 2 * pad) / len(sizes)
    bw = gw * 0.8 / len(names)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="20" text-anchor="middle" font-size="15">Echo msg/s by payload size (100 connections, request-response, 1 server thread)</text>']
    for i in range(6):
        y = H - pad - (H - 2 * pad) * i / 5
        svg.append(f'<line x1="{pad}" x2="{W-pad}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        svg.append(f'<text x="{pad-5}" y="{y+4}" text-anchor="end">{top*i/5/1000:.0f}k</text>')
    for gi, sz in enumerate(sizes):
        x0 = pad + gi * gw + gw * 0.1
        svg.append(f'<text x="{pad + gi*gw + gw/2}" y="{H-pad+18}" text-anchor="middle">{sz} B</text>')
        for si, s in enumerate(names):
            v = chart[s].get(sz, 0)
            h = (H - 2 * pad) * v / top
            svg.append(f'<rect x="{x0 + si*bw:.1f}" y="{H-pad-h:.1f}" width="{bw*0.9:.1f}" height="{h:.1f}" fill="{colors[si % len(colors)]}"/>')
    for si, s in enumerate(names):
        svg.append(f'<rect x="{pad + si*110}" y="{H-22}" width="10" height="10" fill="{colors[si % len(colors)]}"/>')
        svg.append(f'<text x="{pad + si*110 + 14}" y="{H-13}">{s}</text>')
    svg.append("</svg>")
    open(svg_out, "w").write("\n".join(svg) + "\n")
