#!/usr/bin/env bash
# Connection capacity: idle connections held and server RSS per connection, for weft and its
# peers, at 10,000 and at the most one process can hold here (19,000 of a hard 20,000 fds), then
# beyond with several `weft echo --reuseport` processes and several generator processes.
# Keep-alive pings every 20 s: none before the memory is read (a pinged connection is not idle).
#
#   bench/capacity.sh [--quick]     (--quick: 10,000 only, weft on both cores and two peers)
#   (`weft` is `weft echo` on the tokio core, `weft-epoll` and `weft-uring` on the event-driven
#   core)
# Output: bench/out/capacity.jsonl and a table on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0; [[ "${1:-}" == "--quick" ]] && QUICK=1
OUT="$ROOT/bench/out"; mkdir -p "$OUT"; : > "$OUT/capacity.jsonl"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup

declare -A CMD
CMD[weft]="$WEFT echo --threads 1 --addr 127.0.0.1:PORT"
CMD[weft-epoll]="$WEFT echo --core epoll --threads 1 --addr 127.0.0.1:PORT"
CMD[weft-uring]="$WEFT echo --core io-uring --threads 1 --addr 127.0.0.1:PORT"
CMD[tokio-tungstenite]="$PEERS tungstenite --threads 1 --port PORT"
CMD[fastwebsockets]="$PEERS fastwebsockets --threads 1 --port PORT"
CMD[tokio-websockets]="$PEERS tokio-websockets --threads 1 --port PORT"
CMD[node-ws]="node bench/peers/node/echo.js --port PORT"
CMD[py-websockets]="$PYVENV/bin/python bench/peers/python/websockets_echo.py --port PORT"
CMD[picows]="$PYVENV/bin/python bench/peers/python/picows_echo.py --port PORT"
if [[ $QUICK == 1 ]]; then SERVERS=(weft weft-epoll weft-uring tokio-tungstenite fastwebsockets); COUNTS=(10000)
else SERVERS=(weft weft-epoll weft-uring tokio-tungstenite fastwebsockets tokio-websockets node-ws py-websockets picows); COUNTS=(10000 19000); fi
# A subset, e.g. CAP_SERVERS="weft weft-epoll" CAP_COUNTS="10000 19000" bench/capacity.sh
[[ -n "${CAP_SERVERS:-}" ]] && read -r -a SERVERS <<< "$CAP_SERVERS"
[[ -n "${CAP_COUNTS:-}" ]] && read -r -a COUNTS <<< "$CAP_COUNTS"

run() {  # name count processes pids...
  local name=$1 count=$2 procs=$3; shift 3
  local pidargs=(); for p in "$@"; do pidargs+=(--server-pid "$p"); done
  local line
  line=$("$WEFT" bench connections --url "ws://127.0.0.1:$PORT/" -c "$count" --hold 5 --ping-interval 20 --processes "$procs" "${pidargs[@]}" --json) \
    || line='{"error":"run failed"}'
  printf '{"server":"%s","connections":%d,"server_processes":%d,"result":%s}\n' "$name" "$count" "$#" "$line" >> "$OUT/capacity.jsonl"
  echo "$name $count: $line"
}

PORT=9400
for s in "${SERVERS[@]}"; do
  for count in "${COUNTS[@]}"; do
    PORT=$((PORT + 1))
    # shellcheck disable=SC2086
    ${CMD[$s]//PORT/$PORT} > "$OUT/cap-server-$s.log" 2>&1 &
    spid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    run "$s" "$count" 1 "$spid"
    kill "$spid"; wait "$spid" 2>/dev/null || true
  done
done

if [[ $QUICK == 0 && -z "${CAP_SERVERS:-}" ]]; then
  # Beyond one process: 3 weft echo processes sharing the port, 3 generator processes.
  PORT=$((PORT + 1)); pids=()
  for _ in 1 2 3; do "$WEFT" echo --threads 1 --reuseport --addr "127.0.0.1:$PORT" > /dev/null 2>&1 & pids+=($!); done
  sleep 1
  run "weft x3 (SO_REUSEPORT)" 45000 3 "${pids[@]}"
  kill "${pids[@]}"; wait 2>/dev/null || true
  # The event-driven core, idle connections stored small: 64,000 over 4 processes.
  PORT=$((PORT + 1)); pids=()
  for _ in 1 2 3 4; do "$WEFT" echo --core epoll --threads 1 --reuseport --addr "127.0.0.1:$PORT" > /dev/null 2>&1 & pids+=($!); done
  sleep 1
  run "weft-epoll x4 (SO_REUSEPORT)" 64000 4 "${pids[@]}"
  kill "${pids[@]}"; wait 2>/dev/null || true
fi

python3 - "$OUT/capacity.jsonl" <<'PY'
import json, sys
print("| server | connections | opened | still open | connects/s | server RSS per conn |")
print("|---|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    row = json.loads(line); r = row["result"]
    if "error" in r:
        print(f"| {row['server']} | {row['connections']} | failed | | | |"); continue
    per = r.get("server_rss_per_conn_bytes")
    print(f"| {row['server']} | {row['connections']} | {r['opened']} | {r['still_open']} | {r['connects_per_sec']:.0f} | "
          f"{per/1024:.2f} KiB |" if per is not None else "n/a |")
PY
