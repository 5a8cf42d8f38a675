#!/usr/bin/env bash
# The cost of TLS (rustls, ring) per message: `weft echo` with and without `--tls-cert`, the
# same load from `weft bench echo` (ws:// vs wss:// with the test CA), interleaved; server on
# CPU 0, generator on CPU 1. Prints server CPU µs per message and msg/s per cell (medians) and
# the TLS/plain ratios.
#
#   bench/tls_echo.sh [WEFT] [ROUNDS]
set -euo pipefail
WEFT="${1:-target/ci/weft}"; ROUNDS="${2:-3}"
PORT="${TLS_PORT:-19401}"
D=$(mktemp -d)
pid=
trap 'rm -rf "$D"; [[ -n $pid ]] && kill "$pid" 2>/dev/null || true' EXIT
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "port $PORT is in use (TLS_PORT=...)" >&2; exit 2; fi
# A throwaway CA and a leaf certificate for localhost (webpki refuses a CA as the server's own).
(cd "$D" && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" \
  && openssl req -newkey rsa:2048 -nodes -keyout key.pem -out srv.csr -subj /CN=localhost \
  && printf 'subjectAltName=DNS:localhost\n' > ext.cnf \
  && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf) \
  >/dev/null 2>&1
CELLS=("512 1" "512 16" "16384 1" "65536 16")
out="$D/runs"
for round in $(seq "$ROUNDS"); do
  for cell in "${CELLS[@]}"; do
    read -r size inflight <<<"$cell"
    for mode in plain tls; do
      if [[ $mode == tls ]]; then
        srv=(--tls-cert "$D/cert.pem" --tls-key "$D/key.pem"); url="wss://localhost:$PORT/"; ca=(--ca-file "$D/ca.pem")
      else
        srv=(); url="ws://127.0.0.1:$PORT/"; ca=()
      fi
      taskset -c 0 "$WEFT" echo --addr "127.0.0.1:$PORT" --threads 1 "${srv[@]}" >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
      json=$(taskset -c 1 "$WEFT" bench echo --url "$url" "${ca[@]}" -c 100 -s "$size" --in-flight "$inflight" \
               -d 4 --warmup 1 --server-pid "$pid" --json)
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
      echo "$mode $size $inflight $round $json" >>"$out"
    done
  done
done
python3 - "$out" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, size, inflight, rnd, js = line.split(" ", 4)
    j = json.loads(js)
    rows.setdefault((int(size), int(inflight)), {}).setdefault(mode, []).append(
        (j["server_cpu_us_per_msg"], j["msg_per_sec"]))
print("| size | in flight | plain µs/msg | TLS µs/msg | TLS/plain CPU | plain msg/s | TLS msg/s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for (size, inflight), r in sorted(rows.items()):
    cp = statistics.median(c for c, _ in r["plain"]); ct = statistics.median(c for c, _ in r["tls"])
    mp = statistics.median(m for _, m in r["plain"]); mt = statistics.median(m for _, m in r["tls"])
    print(f"| {size} | {inflight} | {cp:.2f} | {ct:.2f} | {ct/cp:.2f} | {mp:.0f} | {mt:.0f} |")
EOF
