#!/usr/bin/env bash
# WebSockets over HTTP/3 (RFC 9220, QUIC) vs over HTTP/1.1 with TLS: `weft echo --tls-cert` (one
# thread, CPU 0) serves both on one port number (TCP and UDP); `weft bench echo` (CPU 1) opens
# N HTTP/1.1 connections over TLS, or N WebSockets as streams of ONE QUIC connection
# (`--http3`). Interleaved rounds; prints, per cell (medians), server CPU µs per message, msg/s
# and round-trip percentiles, and the HTTP/3 / HTTP/1.1 ratios.
#
#   bench/http3_echo.sh [WEFT] [ROUNDS]     (WEFT built with `--features http3`, as scripts/test.sh
#                                           builds target/ci/weft)
set -euo pipefail
WEFT="${1:-target/ci/weft}"; ROUNDS="${2:-3}"
PORT="${H3_PORT:-19421}"
D=$(mktemp -d)
pid=
trap 'rm -rf "$D"; [[ -n $pid ]] && kill "$pid" 2>/dev/null || true' EXIT
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "port $PORT is in use (H3_PORT=...)" >&2; exit 2; fi
# A throwaway CA and a leaf certificate for localhost (webpki refuses a CA as the server's own).
(cd "$D" && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" \
  && openssl req -newkey rsa:2048 -nodes -keyout key.pem -out srv.csr -subj /CN=localhost \
  && printf 'subjectAltName=DNS:localhost\n' > ext.cnf \
  && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf) \
  >/dev/null 2>&1
# connections, size, in flight
CELLS=("1 512 1" "100 512 1" "100 512 16" "100 16384 1" "100 16384 16")
out="$D/runs"
for round in $(seq "$ROUNDS"); do
  for cell in "${CELLS[@]}"; do
    read -r conns size inflight <<<"$cell"
    for mode in h1 h3; do
      flag=(); [[ $mode == h3 ]] && flag=(--http3)
      taskset -c 0 "$WEFT" echo --addr "127.0.0.1:$PORT" --threads 1 --tls-cert "$D/cert.pem" --tls-key "$D/key.pem" \
        >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
      json=$(taskset -c 1 "$WEFT" bench echo --url "wss://localhost:$PORT/" --ca-file "$D/ca.pem" "${flag[@]}" \
               -c "$conns" -s "$size" --in-flight "$inflight" -d 4 --warmup 1 --server-pid "$pid" --json)
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
      echo "$mode $conns $size $inflight $round $json" >>"$out"
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, conns, size, inflight, rnd, js = line.split(" ", 5)
    j = json.loads(js)
    assert j["errors"] == 0 and j["connected"] == int(conns), j
    rows.setdefault((int(conns), int(size), int(inflight)), {}).setdefault(mode, []).append(j)
med = lambda r, f: statistics.median(f(j) for j in r)
print("| conns | size | in flight | TLS HTTP/1.1 µs/msg | HTTP/3 µs/msg | h3/h1 CPU | HTTP/1.1 msg/s | HTTP/3 msg/s | HTTP/1.1 RTT p50 / p99 µs | HTTP/3 RTT p50 / p99 µs |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (conns, size, inflight), r in sorted(rows.items()):
    h1, h3 = r["h1"], r["h3"]
    c1, c3 = med(h1, lambda j: j["server_cpu_us_per_msg"]), med(h3, lambda j: j["server_cpu_us_per_msg"])
    m1, m3 = med(h1, lambda j: j["msg_per_sec"]), med(h3, lambda j: j["msg_per_sec"])
    p = lambda r, q: med(r, lambda j: j["rtt_us"][q])
    gb = any(j["generator_bound"] for j in h1 + h3)
    print(f"| {conns} | {size} | {inflight} | {c1:.2f} | {c3:.2f} | {c3/c1:.2f} | {m1:.0f} | {m3:.0f} | "
          f"{p(h1,'p50'):.0f} / {p(h1,'p99'):.0f} | {p(h3,'p50'):.0f} / {p(h3,'p99'):.0f} |" + (" generator-bound" if gb else ""))
PY
