"""Summarise bench/out/fanout.jsonl (from bench/fanout.sh): median per server, tier and mode,
with weft's ratios to each peer. Prints a markdown table.

usage: python3 bench/fanout_summary.py fanout.jsonl"""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    row = json.loads(line)
    r = row["result"]
    if "error" in r or not r.get("deliveries"):
        continue
    runs[(r["subscribers"], row["mode"]), row["server"]].append(r)


def med(rs, f):
    vals = [r[f] for r in rs if r.get(f) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


cells = sorted({c for (c, _) in runs}, key=lambda c: (c[1], c[0]))
servers = sorted({s for (_, s) in runs}, key=lambda s: (s != "weft", s))
print("| subscribers | mode | server | deliveries/s | p50 ms | p99 ms | server µs/delivery | server cores "
      "| generator µs/delivery | gaps+dups+missing | disconnected | weft ÷ this (deliveries/s) | this ÷ weft (µs/delivery) |")
print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for cell in cells:
    base = runs.get((cell, "weft"))
    b_rate = med(base, "deliveries_per_sec") if base else None
    b_cpu = med(base, "server_cpu_us_per_delivery") if base else None
    for s in servers:
        rs = runs.get((cell, s))
        if not rs:
            continue
        rate, cpu = med(rs, "deliveries_per_sec"), med(rs, "server_cpu_us_per_delivery")
        lat = [r["latency_us"] for r in rs]
        p50 = statistics.median(l["p50"] for l in lat) / 1000
        p99 = statistics.median(l["p99"] for l in lat) / 1000
        bad = sum(r["gaps"] + r["duplicates"] + max(0, r["expected"] - r["deliveries"]) for r in rs)
        disc = sum(r["disconnected"] for r in rs)
        conn = min(r["connected"] for r in rs)
        sub = f"{cell[0]:,}" + ("" if conn == cell[0] else f" ({conn:,} connected)")
        ratio_rate = "" if s == "weft" or not (b_rate and rate) else f"{b_rate / rate:.2f}×"
        ratio_cpu = "" if s == "weft" or not (b_cpu and cpu) else f"{cpu / b_cpu:.2f}×"
        gb = " (gen-bound)" if any(r["generator_bound"] for r in rs) else ""
        print(f"| {sub} | {cell[1]} | {s} | {rate:,.0f}{gb} | {p50:.2f} | {p99:.2f} | {fmt(cpu, '.2f')} "
              f"| {fmt(med(rs, 'server_cpu_cores'), '.2f')} | {fmt(med(rs, 'generator_cpu_us_per_delivery'), '.3f')} | {bad} | {disc} | {ratio_rate} | {ratio_cpu} |")
