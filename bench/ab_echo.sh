#!/usr/bin/env bash
# A/B: two builds of `weft echo` under the same load, interleaved, server on CPU 0 and the
# generator (the B build's `weft bench`) on CPU 1. Prints server CPU µs per message and msg/s
# per cell and round, then the B/A ratios of the medians.
#
#   bench/ab_echo.sh OLD_WEFT NEW_WEFT [ROUNDS]
#
# Build the old one from a worktree, e.g.:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target \
#     cargo build --profile ci -p weft-cli)
#   bench/ab_echo.sh /tmp/old-target/ci/weft target/ci/weft 3
set -euo pipefail
A="$1"; B="$2"; ROUNDS="${3:-3}"
PORT="${AB_PORT:-19301}"
CELLS=("512 16" "512 1" "65536 16" "16384 1")
out=$(mktemp)
pid=
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null || true' EXIT
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "port $PORT is in use (AB_PORT=...)" >&2; exit 2; fi
for round in $(seq "$ROUNDS"); do
  for cell in "${CELLS[@]}"; do
    read -r size inflight <<<"$cell"
    for which in A B; do
      bin=$A; [[ $which == B ]] && bin=$B
      taskset -c 0 "$bin" echo --addr "127.0.0.1:$PORT" --threads 1 >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
      json=$(taskset -c 1 "$B" bench echo --url "ws://127.0.0.1:$PORT/" -c 100 -s "$size" \
               --in-flight "$inflight" -d 4 --warmup 1 --server-pid "$pid" --json)
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
      echo "$which $size $inflight $round $json" >>"$out"
    done
  done
done
python3 - "$out" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    which, size, inflight, rnd, js = line.split(" ", 4)
    j = json.loads(js)
    rows.setdefault((int(size), int(inflight)), {}).setdefault(which, []).append(
        (j["server_cpu_us_per_msg"], j["msg_per_sec"]))
print("| size | in flight | A µs/msg | B µs/msg | B/A CPU | A msg/s | B msg/s | B/A msg/s |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for (size, inflight), r in sorted(rows.items()):
    ca = statistics.median(c for c, _ in r["A"]); cb = statistics.median(c for c, _ in r["B"])
    ra = statistics.median(m for _, m in r["A"]); rb = statistics.median(m for _, m in r["B"])
    print(f"| {size} | {inflight} | {ca:.2f} | {cb:.2f} | {cb/ca:.2f} | {ra:.0f} | {rb:.0f} | {rb/ra:.2f} |")
EOF
rm -f "$out"
