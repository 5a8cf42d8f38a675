#!/usr/bin/env bash
# Side-by-side echo benchmark: weft against its peers, interleaved, median of several rounds.
#
#   bench/compare.sh            full matrix (~25 min): sizes 512 B, 1 KiB, 16 KiB, 64 KiB;
#                               100 and 500 connections; request-response and 16 in flight;
#                               with and without permessage-deflate (where the peer has it); 3 rounds
#   bench/compare.sh --quick    512 B and 16 KiB, 100 connections, 1 round (~2 min)
#
# `weft` is `weft echo` on the tokio core, `weft-epoll` and `weft-uring` on the event-driven
# core (`--core epoll`, `--core io-uring`); `weft-compio` is weft's protocol core on the compio
# runtime (bench/peers/rust/src/bin/weft-compio.rs), the alternative to weft's own io_uring
# loop. BENCH_SERVERS, BENCH_SIZES, BENCH_CONNS and BENCH_ROUNDS select a subset.
#
# Placement: every server runs on CPU 0 with one thread, the generator (`weft bench`, one thread)
# on CPU 1, the same for every peer. Results: bench/out/results.jsonl (one JSON object per run),
# bench/out/summary.md (tables with ratios), bench/chart.svg.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0; ROUNDS=3; DURATION=2; WARMUP=0.5
for a in "$@"; do case "$a" in --quick) QUICK=1; ROUNDS=1; DURATION=1;; esac; done
OUT="$ROOT/bench/out"; mkdir -p "$OUT"; : > "$OUT/results.jsonl"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
echo "== build (release)"
bench_setup

declare -A CMD DEFL
CMD[weft]="$WEFT echo --threads 1 --addr 127.0.0.1:PORT"
CMD[weft+deflate]="$WEFT echo --threads 1 --deflate --addr 127.0.0.1:PORT"; DEFL[weft+deflate]=1
CMD[weft-epoll]="$WEFT echo --core epoll --threads 1 --addr 127.0.0.1:PORT"
CMD[weft-epoll+deflate]="$WEFT echo --core epoll --threads 1 --deflate --addr 127.0.0.1:PORT"; DEFL[weft-epoll+deflate]=1
CMD[weft-uring]="$WEFT echo --core io-uring --threads 1 --addr 127.0.0.1:PORT"
CMD[weft-uring+deflate]="$WEFT echo --core io-uring --threads 1 --deflate --addr 127.0.0.1:PORT"; DEFL[weft-uring+deflate]=1
CMD[weft-compio]="$ROOT/bench/peers/rust/target/release/weft-compio --port PORT"
CMD[tokio-tungstenite]="$PEERS tungstenite --threads 1 --port PORT"
CMD[fastwebsockets]="$PEERS fastwebsockets --threads 1 --port PORT"
CMD[tokio-websockets]="$PEERS tokio-websockets --threads 1 --port PORT"
CMD[node-ws]="node bench/peers/node/echo.js --port PORT"
CMD[node-ws+deflate]="node bench/peers/node/echo.js --deflate --port PORT"; DEFL[node-ws+deflate]=1
CMD[py-websockets]="$PYVENV/bin/python bench/peers/python/websockets_echo.py --port PORT"
CMD[py-websockets+deflate]="$PYVENV/bin/python bench/peers/python/websockets_echo.py --deflate --port PORT"; DEFL[py-websockets+deflate]=1
CMD[picows]="$PYVENV/bin/python bench/peers/python/picows_echo.py --port PORT"
PLAIN=(weft weft-epoll weft-uring weft-compio tokio-tungstenite fastwebsockets tokio-websockets node-ws py-websockets picows)
DEFLATED=(weft+deflate weft-epoll+deflate weft-uring+deflate node-ws+deflate py-websockets+deflate)
# A subset of the servers, e.g. BENCH_SERVERS="weft weft-epoll fastwebsockets" bench/compare.sh
if [[ -n "${BENCH_SERVERS:-}" ]]; then
  read -r -a picked <<< "$BENCH_SERVERS"
  keep() { local s; for s in "${picked[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }
  p=(); for s in "${PLAIN[@]}"; do keep "$s" && p+=("$s"); done; PLAIN=("${p[@]}")
  d=(); for s in "${DEFLATED[@]}"; do keep "$s" && d+=("$s"); done; DEFLATED=("${d[@]}")
fi

declare -A PID PORT
port=9300
cleanup() { for s in "${!PID[@]}"; do kill "${PID[$s]}" 2>/dev/null || true; done; }
trap cleanup EXIT
for s in "${PLAIN[@]}" "${DEFLATED[@]}"; do
  port=$((port + 1)); PORT[$s]=$port
  # shellcheck disable=SC2086
  taskset -c 0 ${CMD[$s]//PORT/$port} > "$OUT/server-$s.log" 2>&1 &
  PID[$s]=$!
done
for s in "${!PORT[@]}"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$s]}") 2>/dev/null && break; sleep 0.1; done
done

if [[ $QUICK == 1 ]]; then SIZES=(512 16384); CONNS=(100); else SIZES=(512 1024 16384 65536); CONNS=(100 500); fi
# Overrides for partial runs, e.g. BENCH_CONNS="100" BENCH_ROUNDS=1 bench/compare.sh
[[ -n "${BENCH_SIZES:-}" ]] && read -r -a SIZES <<< "$BENCH_SIZES"
[[ -n "${BENCH_CONNS:-}" ]] && read -r -a CONNS <<< "$BENCH_CONNS"
[[ -n "${BENCH_ROUNDS:-}" ]] && ROUNDS=$BENCH_ROUNDS
MODES=(1 16)
total=$(( ${#SIZES[@]} * ${#CONNS[@]} * ${#MODES[@]} * (${#PLAIN[@]} + ${#DEFLATED[@]}) * ROUNDS ))
echo "== $total runs of ${DURATION}s (+${WARMUP}s warm-up); servers on CPU 0, generator on CPU 1"
n=0
for round in $(seq "$ROUNDS"); do
  for size in "${SIZES[@]}"; do for c in "${CONNS[@]}"; do for inflight in "${MODES[@]}"; do
    for s in "${PLAIN[@]}" "${DEFLATED[@]}"; do
      n=$((n + 1))
      extra=(); [[ -n "${DEFL[$s]:-}" ]] && extra=(--deflate)
      line=$(taskset -c 1 "$WEFT" bench echo --url "ws://127.0.0.1:${PORT[$s]}/" -c "$c" -s "$size" \
               --in-flight "$inflight" -d "$DURATION" --warmup "$WARMUP" --server-pid "${PID[$s]}" --json "${extra[@]}" 2>/dev/null) \
        || line='{"error":"run failed"}'
      printf '{"server":"%s","round":%d,"result":%s}\n' "$s" "$round" "$line" >> "$OUT/results.jsonl"
      printf '\r  %d/%d  %-22s size=%-6s conns=%-4s in_flight=%-3s' "$n" "$total" "$s" "$size" "$c" "$inflight"
    done
  done; done; done
done
echo
python3 bench/summarize.py "$OUT/results.jsonl" "$OUT/summary.md" bench/chart.svg
cat "$OUT/summary.md"
