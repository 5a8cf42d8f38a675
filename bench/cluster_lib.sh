# shellcheck shell=bash
# Shared by cluster_fanout.sh and cluster_compare.sh: one redis-server and one nats-server -js
# on local ports, and `run`, which starts `weft serve` nodes (the binary in $SERVE, default
# $WEFT) joined by a broker, drives them with `weft bench fanout` ($WEFT) and prints one table
# row: deliveries/s, latency, gaps, the CPU of every node, of the broker and of the generator,
# and the subscriber nodes' CPU per delivery.
# Needs WEFT, SECS; optional SERVE, CLUSTER_PORT.
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
NPORT=$(( BASE + 1 ))
nats-server -js -a 127.0.0.1 -p "$NPORT" -sd "$D/nats" >/dev/null 2>&1 &
NATS=$!; pids+=("$NATS"); wait_port "$NPORT"
HZ=$(getconf CLK_TCK)
SERVE="${SERVE:-$WEFT}"
header() {
  echo "| setup | subscribers | deliveries/s | p50 µs | p99 µs | gaps+dups+missing | weft CPU (cores, per node) | µs of subscriber-node CPU per delivery | broker CPU | generator CPU |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
}
run() { # name broker(memory|redis|nats) nodes subscribers extra-bench-args...
  local name=$1 kind=$2 n=$3 subs=$4; shift 4
  local nodes=() ports=() k
  local count=$n prefix="b$RANDOM" url="" bpid=$REDIS
  case $kind in
    redis) url="redis://127.0.0.1:$RPORT" ;;
    nats) url="nats://127.0.0.1:$NPORT"; bpid=$NATS ;;
  esac
  for k in $(seq "$count"); do
    local port=$(( BASE + 10 + k ))
    local broker=(); [[ -n $url ]] && broker=(--broker "$url" --broker-prefix "$prefix" --node-name "n$k")
    "$SERVE" serve --addr "127.0.0.1:$port" --threads 1 --rate-limit 1000000 --rate-burst 1000000 \
      --max-connections 100000 "${broker[@]}" >/dev/null 2>&1 &
    nodes+=($!); pids+=($!); ports+=("$port"); wait_port "$port"
  done
  local urls=() i
  if (( count == 1 )); then urls=(--subscriber-url "ws://127.0.0.1:${ports[0]}/ws")
  else for i in $(seq 1 $(( count - 1 ))); do urls+=(--subscriber-url "ws://127.0.0.1:${ports[$i]}/ws"); done; fi
  local before=() p
  for p in "${nodes[@]}" "$bpid"; do before+=("$(ticks "$p")"); done
  local t0; t0=$(date +%s.%N)
  local json
  json=$("$WEFT" bench fanout --url "ws://127.0.0.1:${ports[0]}/ws" "${urls[@]}" --subscribers "$subs" -d "$SECS" \
           --topic "t$RANDOM" "$@" --json) || true
  local t1; t1=$(date +%s.%N)
  local after=()
  for p in "${nodes[@]}" "$bpid"; do after+=("$(ticks "$p")"); done
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
broker = "—" if name.startswith("memory") else f"{cores[-1]:.2f}"
# With one node it does everything; with more, the subscribers are on the nodes after the first.
sub_cores = sum(cores[:-1]) if len(cores) == 2 else sum(cores[1:-1])
per = sub_cores * secs * 1e6 / j["deliveries"] if j["deliveries"] else float("nan")
print(f"| {name} | {subs} | {j['deliveries_per_sec']:,.0f} | {l['p50']:.0f} | {l['p99']:.0f} | {bad} | {weft} | {per:.2f} | {broker} | {j['generator_cpu_cores'] or 0:.2f} |")
PY
}
