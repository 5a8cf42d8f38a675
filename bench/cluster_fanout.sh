#!/usr/bin/env bash
# Cluster mode fan-out: `weft bench fanout` against 1, 2 and 3 `weft serve` nodes joined by one
# redis-server (publisher on the first node, subscribers spread over the others; with one node,
# everything on it), and the in-memory broker on one node as the baseline. Then publish →
# delivery latency at a low rate, one subscriber, memory vs Redis across nodes. Reports
# deliveries/s, latency, gaps/duplicates, and the CPU (cores) of every weft process, of Redis and
# of the generator, from /proc.
#
#   bench/cluster_fanout.sh [WEFT] [SUBSCRIBERS] [SECONDS]
set -euo pipefail
WEFT="${1:-target/release/weft}"; SUBS="${2:-1000}"; SECS="${3:-8}"
BASE="${CLUSTER_PORT:-19500}"
D=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
RPORT=$BASE
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
REDIS=$!; pids+=("$REDIS"); wait_port "$RPORT"
HZ=$(getconf CLK_TCK)
echo "| setup | subscribers | deliveries/s | p50 µs | p99 µs | gaps+dups+missing | weft CPU (cores, per node) | Redis CPU | generator CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
run() { # name nodes(0 = memory broker) subscribers extra-bench-args...
  local name=$1 n=$2 subs=$3; shift 3
  local nodes=() ports=() k
  local count=$(( n == 0 ? 1 : n )) prefix="b$RANDOM"
  for k in $(seq "$count"); do
    local port=$(( BASE + 10 + k ))
    local broker=(); (( n > 0 )) && broker=(--broker "redis://127.0.0.1:$RPORT" --broker-prefix "$prefix" --node-name "n$k")
    "$WEFT" serve --addr "127.0.0.1:$port" --threads 1 --rate-limit 1000000 --rate-burst 1000000 \
      --max-connections 100000 "${broker[@]}" >/dev/null 2>&1 &
    nodes+=($!); pids+=($!); ports+=("$port"); wait_port "$port"
  done
  local urls=() i
  if (( count == 1 )); then urls=(--subscriber-url "ws://127.0.0.1:${ports[0]}/ws")
  else for i in $(seq 1 $(( count - 1 ))); do urls+=(--subscriber-url "ws://127.0.0.1:${ports[$i]}/ws"); done; fi
  local before=() p
  for p in "${nodes[@]}" "$REDIS"; do before+=("$(ticks "$p")"); done
  local t0; t0=$(date +%s.%N)
  local json
  json=$("$WEFT" bench fanout --url "ws://127.0.0.1:${ports[0]}/ws" "${urls[@]}" --subscribers "$subs" -d "$SECS" \
           --topic "t$RANDOM" "$@" --json) || true
  local t1; t1=$(date +%s.%N)
  local after=()
  for p in "${nodes[@]}" "$REDIS"; do after+=("$(ticks "$p")"); done
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  python3 - "$name" "$subs" "$HZ" "$t0" "$t1" "$json" "${before[*]}" "${after[*]}" <<'PY'
import json, sys
name, subs, hz, t0, t1, js, before, after = sys.argv[1:9]
j = json.loads(js)
secs = float(t1) - float(t0)
b = [int(x) for x in before.split()]; a = [int(x) for x in after.split()]
cores = [(y - x) / int(hz) / secs for x, y in zip(b, a)]
weft = " + ".join(f"{c:.2f}" for c in cores[:-1])
bad = j["gaps"] + j["duplicates"] + j["missing"]
l = j["latency_us"]
print(f"| {name} | {subs} | {j['deliveries_per_sec']:,.0f} | {l['p50']:.0f} | {l['p99']:.0f} | {bad} | {weft} | {cores[-1]:.2f} | {j['generator_cpu_cores'] or 0:.2f} |")
PY
}
run "memory, 1 node" 0 "$SUBS"
run "redis, 1 node" 1 "$SUBS"
run "redis, 2 nodes" 2 "$SUBS"
run "redis, 3 nodes" 3 "$SUBS"
echo
echo "Publish-bound: 10 subscribers, 256 events in flight (publisher on node 1):"
echo
echo "| setup | subscribers | deliveries/s | p50 µs | p99 µs | gaps+dups+missing | weft CPU (cores, per node) | Redis CPU | generator CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
run "memory, 1 node" 0 10 --window 256
run "redis, 1 node" 1 10 --window 256
run "redis, 2 nodes" 2 10 --window 256
echo
echo "Publish → delivery latency, 1 subscriber, 500 events/s (publisher on node 1, subscriber on node 2 with Redis):"
echo
echo "| setup | subscribers | deliveries/s | p50 µs | p99 µs | gaps+dups+missing | weft CPU (cores, per node) | Redis CPU | generator CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
run "memory, 1 node" 0 1 --rate 500
run "redis, 2 nodes" 2 1 --rate 500
