#!/usr/bin/env bash
# What subscription filters cost: `weft bench fanout` against one `weft serve` (memory broker,
# one thread), SUBSCRIBERS subscribers (10,000 by default) without filters and with 1, 100 and
# 10,000 distinct filters spread over them (every event passes every filter, so deliveries are
# the same and the difference is the evaluation), rounds interleaved. Prints one table row per
# run: deliveries/s and the server's CPU per delivery.
#
#   bench/filters.sh [WEFT] [SUBSCRIBERS] [SECONDS] [ROUNDS]
set -euo pipefail
WEFT="${1:-target/release/weft}"; SUBS="${2:-10000}"; SECS="${3:-6}"; ROUNDS="${4:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/cluster_lib.sh
source "$ROOT/bench/cluster_lib.sh"
header
for round in $(seq "$ROUNDS"); do
  run "no filter (round $round)" memory 1 "$SUBS"
  for n in 1 100 10000; do
    run "$n distinct filters (round $round)" memory 1 "$SUBS" --filters "$n"
  done
done
