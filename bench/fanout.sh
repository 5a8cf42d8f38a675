#!/usr/bin/env bash
# Side-by-side fan-out benchmark: `weft serve` against wse-server 2.5.1 (its standalone
# RustWSEServer, subscriptions by the host with subscribe_connection, publishing with
# broadcast_local) and a plain tokio-tungstenite broadcast loop (the floor), interleaved.
#
#   bench/fanout.sh            tiers 10, 1,000, 10,000 and 19,000 subscribers (19,000 is about
#                              the most one process can hold under the 20,000-descriptor limit);
#                              each at the sustainable maximum and paced; 3 rounds (~25 min)
#   bench/fanout.sh --quick    tiers 10 and 1,000, 1 round (~2 min)
#
# Memory per subscriber is read 2.5 s after the last subscribed (FANOUT_SETTLE): long enough for
# the event-driven core to store idle connections small. FANOUT_SERVERS="weft weft-uring" picks servers.
# Placement: every server on CPU 0 (weft and the floor with one runtime thread), the generator
# (`weft bench fanout`, one thread) on CPU 1. Results: bench/out/fanout.jsonl, summary printed
# by bench/fanout_summary.py. The generator receives straight off the socket (`--receiver raw`);
# FANOUT_RECEIVER=full receives through weft's client instead, as the generator did before.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0; ROUNDS=3
for a in "$@"; do case "$a" in --quick) QUICK=1; ROUNDS=1;; esac; done
[[ -n "${BENCH_ROUNDS:-}" ]] && ROUNDS=$BENCH_ROUNDS
OUT="$ROOT/bench/out"; mkdir -p "$OUT"; : > "$OUT/fanout.jsonl"
echo "== build (release) and peers"
cargo build --release -q -p weft-cli
(cd bench/peers/rust && cargo build --release -q)
WSE_VENV="${WEFT_WSE_VENV:-$HOME/.cache/wse-venv}"
if [[ ! -x "$WSE_VENV/bin/python" ]]; then
  py312="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/3.12.1/bin/python"
  [[ -x "$py312" ]] || py312=python3.12
  "$py312" -m venv "$WSE_VENV"
fi
"$WSE_VENV/bin/pip" install -q wse-server==2.5.1
WEFT="$ROOT/target/release/weft"
PEERS="$ROOT/bench/peers/rust/target/release/weft-bench-peers"
ulimit -n "$(ulimit -Hn)"

declare -A CMD PROTO URL
CMD[weft]="$WEFT serve --threads 1 --addr 127.0.0.1:PORT --rate-limit 1000000000 --rate-burst 1000000000 --max-connections 30000"
PROTO[weft]=weft; URL[weft]="ws://127.0.0.1:PORT/ws"
# The engine's WebSockets on the event-driven core: its loop and the runtime thread (broker,
# timers) both on CPU 0.
CMD[weft-epoll]="$WEFT serve --core epoll --threads 1 --addr 127.0.0.1:PORT --rate-limit 1000000000 --rate-burst 1000000000 --max-connections 30000"
PROTO[weft-epoll]=weft; URL[weft-epoll]="ws://127.0.0.1:PORT/ws"
CMD[weft-uring]="$WEFT serve --core io-uring --threads 1 --addr 127.0.0.1:PORT --rate-limit 1000000000 --rate-burst 1000000000 --max-connections 30000"
PROTO[weft-uring]=weft; URL[weft-uring]="ws://127.0.0.1:PORT/ws"
CMD[wse-server]="$WSE_VENV/bin/python bench/peers/python/wse_fanout.py --port PORT"
PROTO[wse-server]=plain; URL[wse-server]="ws://127.0.0.1:PORT/"
CMD[tungstenite-floor]="$PEERS broadcast --threads 1 --port PORT"
PROTO[tungstenite-floor]=plain; URL[tungstenite-floor]="ws://127.0.0.1:PORT/"
SERVERS=(weft weft-epoll weft-uring wse-server tungstenite-floor)
[[ -n "${FANOUT_SERVERS:-}" ]] && read -r -a SERVERS <<< "$FANOUT_SERVERS"

if [[ $QUICK == 1 ]]; then TIERS=(10 1000); else TIERS=(10 1000 10000 19000); fi
[[ -n "${BENCH_TIERS:-}" ]] && read -r -a TIERS <<< "$BENCH_TIERS"
# Paced rates: about 10,000-20,000 deliveries/s, far below every server's capacity, so the
# latency measured is the fan-out itself rather than queueing.
declare -A RATE=([10]=1000 [1000]=10 [10000]=1 [19000]=1)

port=9500
run_one() { # server subscribers mode round
  local s=$1 n=$2 mode=$3 round=$4 pid line extra=()
  port=$((port + 1))
  # A fresh server per run: no state carried from one tier to the next.
  # shellcheck disable=SC2086
  taskset -c 0 ${CMD[$s]//PORT/$port} > "$OUT/fanout-server-$s.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  if [[ $mode == paced ]]; then extra=(--rate "${RATE[$n]:-1}" --duration 10); else extra=(--duration 5); fi
  line=$(taskset -c 1 "$WEFT" bench fanout --protocol "${PROTO[$s]}" --url "${URL[$s]//PORT/$port}" \
           --subscribers "$n" --size 256 --server-pid "$pid" --json --receiver "${FANOUT_RECEIVER:-raw}" \
           --settle "${FANOUT_SETTLE:-2.5}" "${extra[@]}" \
           2>"$OUT/fanout-gen.err") \
    || line='{"error":"run failed"}'
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  printf '{"server":"%s","mode":"%s","round":%d,"result":%s}\n' "$s" "$mode" "$round" "$line" >> "$OUT/fanout.jsonl"
}
total=$(( ${#TIERS[@]} * 2 * ${#SERVERS[@]} * ROUNDS )); k=0
echo "== $total runs; servers on CPU 0, generator on CPU 1"
for round in $(seq "$ROUNDS"); do
  for n in "${TIERS[@]}"; do for mode in max paced; do for s in "${SERVERS[@]}"; do
    k=$((k + 1)); printf '\r  %d/%d  %-18s subscribers=%-6s %-6s' "$k" "$total" "$s" "$n" "$mode"
    run_one "$s" "$n" "$mode" "$round"
  done; done; done
done
echo
python3 bench/fanout_summary.py "$OUT/fanout.jsonl"
