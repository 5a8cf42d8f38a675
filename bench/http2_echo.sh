#!/usr/bin/env bash
# WebSockets over HTTP/2 (RFC 8441) vs HTTP/1.1: `weft echo` (one thread, CPU 0) under the same
# load from `weft bench echo` (CPU 1): 100 HTTP/1.1 connections, or 100 WebSockets multiplexed
# as streams of ONE cleartext HTTP/2 connection (`--http2`). Interleaved rounds; prints server
# CPU µs per message and msg/s per cell (medians) and the HTTP/2 / HTTP/1.1 ratios.
#
#   bench/http2_echo.sh [WEFT] [ROUNDS]
set -euo pipefail
WEFT="${1:-target/ci/weft}"; ROUNDS="${2:-3}"
PORT="${H2_PORT:-19411}"
D=$(mktemp -d)
pid=
trap 'rm -rf "$D"; [[ -n $pid ]] && kill "$pid" 2>/dev/null || true' EXIT
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "port $PORT is in use (H2_PORT=...)" >&2; exit 2; fi
CELLS=("512 1" "512 16" "16384 1" "16384 16")
out="$D/runs"
for round in $(seq "$ROUNDS"); do
  for cell in "${CELLS[@]}"; do
    read -r size inflight <<<"$cell"
    for mode in h1 h2; do
      flag=(); [[ $mode == h2 ]] && flag=(--http2)
      taskset -c 0 "$WEFT" echo --addr "127.0.0.1:$PORT" --threads 1 >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
      json=$(taskset -c 1 "$WEFT" bench echo --url "ws://127.0.0.1:$PORT/" "${flag[@]}" -c 100 -s "$size" \
               --in-flight "$inflight" -d 4 --warmup 1 --server-pid "$pid" --json)
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
      echo "$mode $size $inflight $round $json" >>"$out"
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, size, inflight, rnd, js = line.split(" ", 4)
    j = json.loads(js)
    assert j["errors"] == 0 and j["connected"] == 100, j
    rows.setdefault((int(size), int(inflight)), {}).setdefault(mode, []).append(
        (j["server_cpu_us_per_msg"], j["msg_per_sec"], j["generator_bound"]))
print("| size | in flight | HTTP/1.1 µs/msg | HTTP/2 µs/msg | h2/h1 CPU | HTTP/1.1 msg/s | HTTP/2 msg/s | h2/h1 msg/s |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for (size, inflight), r in sorted(rows.items()):
    c1 = statistics.median(c for c, _, _ in r["h1"]); c2 = statistics.median(c for c, _, _ in r["h2"])
    m1 = statistics.median(m for _, m, _ in r["h1"]); m2 = statistics.median(m for _, m, _ in r["h2"])
    gb = any(g for _, _, g in r["h1"] + r["h2"])
    print(f"| {size} | {inflight} | {c1:.2f} | {c2:.2f} | {c2/c1:.2f} | {m1:.0f} | {m2:.0f} | {m2/m1:.2f} |" + (" generator-bound" if gb else ""))
PY
