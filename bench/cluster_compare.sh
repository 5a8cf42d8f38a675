#!/usr/bin/env bash
# Two builds of `weft serve` side by side in cluster mode, driven by one generator (the NEW
# build's `weft bench fanout`), rounds interleaved: fan-out to exact and to pattern
# subscribers across two nodes (Redis, NATS), and one hot topic publish-bound on one node.
# For checking that a change to the cluster node costs nothing, or what it costs.
#
#   bench/cluster_compare.sh OLD_WEFT NEW_WEFT [SUBSCRIBERS] [SECONDS] [ROUNDS]
set -euo pipefail
OLD="$1"; NEW="$2"; SUBS="${3:-1000}"; SECS="${4:-6}"; ROUNDS="${5:-2}"
WEFT="$NEW"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/cluster_lib.sh
source "$ROOT/bench/cluster_lib.sh"
header
for round in $(seq "$ROUNDS"); do
  for build in old new; do
    if [[ $build == old ]]; then SERVE="$OLD"; else SERVE="$NEW"; fi
    run "$build (round $round): redis, 2 nodes, exact" redis 2 "$SUBS"
    run "$build (round $round): redis, 2 nodes, pattern *" redis 2 "$SUBS" --subscribe '*'
    run "$build (round $round): nats, 2 nodes, pattern *" nats 2 "$SUBS" --subscribe '*'
    run "$build (round $round): redis, 1 node, 10 subscribers, publish-bound" redis 1 10 --window 256
  done
done
