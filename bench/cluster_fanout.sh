#!/usr/bin/env bash
# Cluster mode fan-out: `weft bench fanout` against 1, 2 and 3 `weft serve` nodes joined by one
# redis-server or one nats-server -js (publisher on the first node, subscribers spread over the
# others; with one node, everything on it), and the in-memory broker on one node as the
# baseline. Then publish-bound runs and publish → delivery latency at a low rate, one
# subscriber. Reports deliveries/s, latency, gaps/duplicates, and the CPU (cores) of every weft
# process, of the broker and of the generator, from /proc.
#
#   bench/cluster_fanout.sh [WEFT] [SUBSCRIBERS] [SECONDS]
set -euo pipefail
WEFT="${1:-target/release/weft}"; SUBS="${2:-1000}"; SECS="${3:-8}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/cluster_lib.sh
source "$ROOT/bench/cluster_lib.sh"
header
MODE="${CLUSTER_BROKERS:-redis nats}"
run "memory, 1 node" memory 1 "$SUBS"
for b in $MODE; do
  run "$b, 1 node" "$b" 1 "$SUBS"
  run "$b, 2 nodes" "$b" 2 "$SUBS"
  run "$b, 3 nodes" "$b" 3 "$SUBS"
done
echo
echo "Publish-bound: 10 subscribers, 256 events in flight (publisher on node 1):"
echo
header
run "memory, 1 node" memory 1 10 --window 256
for b in $MODE; do
  run "$b, 1 node" "$b" 1 10 --window 256
  run "$b, 2 nodes" "$b" 2 10 --window 256
done
echo
echo "Publish → delivery latency, 1 subscriber, 500 events/s (publisher on node 1, subscriber on node 2):"
echo
header
run "memory, 1 node" memory 1 1 --rate 500
for b in $MODE; do
  run "$b, 2 nodes" "$b" 2 1 --rate 500
done
