#!/usr/bin/env bash
# Python WebSocket clients side by side against one fast echo server (`weft echo`, one thread).
#
#   bench/python/run.sh            3 rounds, every client in a fresh interpreter, interleaved
#   BENCH_ROUNDS=1 bench/python/run.sh
#
# Cells: request-response RTT at 512 B and 64 KiB (1,000 timed after 1,000 warm-up: their median
# is the cold figure); pipelined 1,000 x 512 B (all sent, then all received) and 1,000 x 64 KiB
# with 16 in flight (the first batch is the cold figure, the median of 5 more the warm one).
# Every asyncio client runs on asyncio's default loop and on uvloop (`-uvloop`). Client and server share one vCPU (taskset -c 0): on
# different vCPUs every client measures the VM's wake-up latency instead. Results:
# bench/out/python.jsonl and a markdown table (bench/python/summarize.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ROUNDS="${BENCH_ROUNDS:-3}"
VENV="${WEFT_BENCH_PY312:-$HOME/.cache/weft-bench-py312}"
if [[ ! -x "$VENV/bin/python" ]]; then
  py312="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/3.12.1/bin/python"
  [[ -x "$py312" ]] || py312=python3.12
  "$py312" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r bench/python/requirements.txt
"$VENV/bin/pip" install -q --force-reinstall --no-deps ./bindings/python
cargo build --release -q -p weft-cli
OUT="$ROOT/bench/out"; mkdir -p "$OUT"; : > "$OUT/python.jsonl"
PORT=9731
taskset -c 0 "$ROOT/target/release/weft" echo --threads 1 --addr "127.0.0.1:$PORT" > "$OUT/python-echo.log" 2>&1 &
ECHO=$!
trap 'kill $ECHO 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
CLIENTS=(weft-sync weft-websockets-sync websocket-rs-sync websockets-sync websocket-client raw-socket)
for c in weft-async weft-async-callback weft-websockets-async websocket-rs-async picows picows-websockets websockets-async aiohttp; do
  CLIENTS+=("$c" "$c-uvloop")
done
CELLS=("--size 512 --mode rr" "--size 65536 --mode rr" "--size 512 --mode pipe" "--size 65536 --mode pipe --in-flight 16")
total=$(( ROUNDS * ${#CELLS[@]} * ${#CLIENTS[@]} )); n=0
for round in $(seq "$ROUNDS"); do
  for cell in "${CELLS[@]}"; do
    for c in "${CLIENTS[@]}"; do
      n=$((n + 1)); printf '\r  %d/%d %-20s %s      ' "$n" "$total" "$c" "$cell"
      # shellcheck disable=SC2086
      line=$(taskset -c 0 "$VENV/bin/python" -W ignore bench/python/client_bench.py --client "$c" \
               --url "ws://127.0.0.1:$PORT/" $cell 2>>"$OUT/python-errors.log") || line="{\"client\":\"$c\",\"error\":true}"
      printf '{"round":%d,"cell":"%s","result":%s}\n' "$round" "$cell" "$line" >> "$OUT/python.jsonl"
    done
  done
done
echo
"$VENV/bin/python" bench/python/summarize.py "$OUT/python.jsonl" "$OUT/python.svg"
