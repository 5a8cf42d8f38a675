#!/usr/bin/env bash
# Run every test weft has, installing what it needs on a fresh machine.
#
#   scripts/test.sh            fmt, clippy, cargo deny, Rust tests (unit, integration, interop —
#                              over HTTP/1.1, HTTP/2 and HTTP/3 —, doc, cluster mode over redis-server and nats-server), the
#                              engine's integration tests again on the Redis and on the NATS
#                              broker, every fuzz target for FUZZ_SECONDS (30) each, the Python
#                              package (built into a venv, pytest), the browser pages, the
#                              TypeScript client (vitest: unit, Node and Chromium end to end), WebSockets
#                              over HTTP/2 with Node's http2 module both ways, the full
#                              Autobahn suite as server and as client (517 cases each) and
#                              again over HTTP/2 and over HTTP/3 through a bridge (without 12.*/13.*), the
#                              client suite also with the Python sync and asyncio clients
#                              (without the permessage-deflate cases 12.*/13.*: same codec),
#                              and the server suite against the event-driven core on each
#                              backend (`weft echo --core epoll` and `--core io-uring`; of
#                              12.*/13.* only 12.1.*/13.1.*)
#   scripts/test.sh --quick    the same without the slow permessage-deflate cases 12.*/13.*
#
# Needs: the Rust toolchain, python3, and the shared Autobahn tooling beside the repository
# (../shared/tools/autobahn, override with WEFT_SHARED=/path/to/shared). Installs: a Python 2.7
# virtualenv with the Autobahn TestSuite and a Python 3 venv with `websockets`, `h2`, `wsproto` and `aioquic` (both cached in
# ~/.cache, reused when present); qemu-user and the aarch64 cross linker (apt-get) and the
# aarch64 Rust target (rustup), to run the NEON masking kernel's tests under emulation; Debian's
# chromium (apt-get) and playwright-core (npm, tests/browser) for the pages of `weft serve`; the
# TypeScript client's dev dependencies (npm ci in clients/typescript: typescript, vitest,
# esbuild, ws, react, playwright-core), whose tests run in Node and in that Chromium; a
# Python venv (~/.cache/weft-py) with pytest, websockets, uvloop and the `weft` package built
# from bindings/python by maturin (pip fetches it as the PEP 517 build backend); cargo-deny and
# cargo-fuzz (cargo install, when missing; the fuzzers build with RUSTC_BOOTSTRAP=1 on stable);
# redis-server and nats-server (apt-get, when missing; the tests start their own on free ports);
# cmake, clang and libclang-dev (apt-get, when missing), which quiche's BoringSSL needs to build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
SHARED="${WEFT_SHARED:-$ROOT/../shared}"
AB="$SHARED/tools/autobahn"
[[ -x "$AB/run-server-suite.sh" || -f "$AB/run-server-suite.sh" ]] || {
  echo "error: Autobahn tooling not found at $AB (set WEFT_SHARED)" >&2; exit 2; }
OUT="$ROOT/target/test-reports"
mkdir -p "$OUT"
step() { printf '\n==== %s (%s)\n' "$1" "$(date +%T)"; }
t_start=$(date +%s)

step "install: Autobahn TestSuite (Python 2.7) and websockets (Python 3)"
bash "$AB/install.sh" wstest peers
export WEFT_PYTHON="${WEFT_PYTHON:-$HOME/.cache/autobahn-peers/bin/python}"
export WEFT_REQUIRE_PYTHON=1  # the interop tests must not skip here
export WEFT_REQUIRE_IO_URING=1  # nor the io_uring suites: this kernel has io_uring
# The independent HTTP/2 and HTTP/3 peers of the interop tests: h2 (HTTP/2), aioquic (QUIC +
# HTTP/3) and wsproto (WebSocket frames).
"$WEFT_PYTHON" -m pip install -q h2==4.4.1 wsproto==1.3.2 aioquic==1.7.2
"$WEFT_PYTHON" -c 'import websockets, h2, wsproto, aioquic; print("websockets", websockets.__version__, "h2", h2.__version__, "wsproto", wsproto.__version__, "aioquic", aioquic.__version__)'

step "install: cmake, clang and libclang for quiche's BoringSSL (HTTP/3)"
if ! command -v cmake >/dev/null || ! command -v clang >/dev/null || ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake clang libclang-dev >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path bindings/python/Cargo.toml -- --check

step "cargo clippy -D warnings"
# With HTTP/3 (the binary's `http3` feature, quiche + BoringSSL), and the binary without it:
# what `cargo run -p weft-cli -- serve` builds on a machine without cmake.
cargo clippy --workspace --all-targets --locked --features weft-cli/http3 -- -D warnings
cargo clippy -p weft-cli --all-targets --locked -- -D warnings
cargo clippy --manifest-path bindings/python/Cargo.toml --locked -- -D warnings

step "cargo test (unit, integration, interop, doc; cluster mode over redis-server and nats-server)"
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null
fi
if ! command -v nats-server >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null
fi
# Profile ci (optimised, with debug assertions and overflow checks): the binaries the
# conformance runs below use come out of this same build.
cargo test --workspace --locked --profile ci --features weft-cli/http3

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; }

step "the engine's integration tests again, its WebSockets on the event-driven core (epoll, then io_uring)"
# `--workspace` with the features above: the test binary is the one `cargo test` built
# (`-p weft-server` alone resolves other features and rebuilt 26 crates first).
WEFT_TEST_CORE=epoll cargo test --locked --profile ci --workspace --features weft-cli/http3 --test engine
WEFT_TEST_CORE=io-uring cargo test --locked --profile ci --workspace --features weft-cli/http3 --test engine

step "the engine's integration tests again, on the Redis broker (a redis-server of their own)"
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no > "$OUT/redis.log" 2>&1 &
REDIS_PID=$!
wait_port "$RPORT"
r_rc=0
WEFT_TEST_BROKER="redis://127.0.0.1:$RPORT" cargo test --locked --profile ci --workspace --features weft-cli/http3 --test engine || r_rc=$?
kill $REDIS_PID; wait $REDIS_PID 2>/dev/null || true
[[ $r_rc -eq 0 ]] || { echo "engine tests on Redis FAILED" >&2; exit 1; }

step "the engine's integration tests again, on the NATS broker (a nats-server -js of their own)"
NPORT=$(free_port)
NSTORE=$(mktemp -d)
# Every test's engine has a prefix, and so JetStream streams, of its own, and JetStream reserves
# each stream's max_bytes (1 GiB of file store for history, 256 MiB of memory for presence):
# by default it allows 75 % of the free disk and of the memory, which a small CI disk runs out of.
cat > "$NSTORE/nats.conf" <<EOF
listen: 127.0.0.1:$NPORT
jetstream { store_dir: "$NSTORE/js", max_file_store: 1TB, max_memory_store: 64GB }
EOF
nats-server -c "$NSTORE/nats.conf" > "$OUT/nats.log" 2>&1 &
NATS_PID=$!
wait_port "$NPORT"
n_rc=0
WEFT_TEST_BROKER="nats://127.0.0.1:$NPORT" cargo test --locked --profile ci --workspace --features weft-cli/http3 --test engine || n_rc=$?
kill $NATS_PID; wait $NATS_PID 2>/dev/null || true
rm -rf "$NSTORE"
[[ $n_rc -eq 0 ]] || { echo "engine tests on NATS FAILED" >&2; exit 1; }

step "cargo deny: licenses, duplicate crates, sources (and advisories where the database is reachable)"
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
cargo deny check bans licenses sources
cargo deny --manifest-path bindings/python/Cargo.toml check bans licenses sources 2> >(grep -v unmatched-skip >&2)
if cargo deny fetch >/dev/null 2>&1; then
  cargo deny check advisories
  cargo deny --manifest-path bindings/python/Cargo.toml check advisories
else
  echo "cargo deny advisories: SKIPPED — the RustSec database could not be fetched (no route to its git host here)"
fi

step "fuzz: every target for ${FUZZ_SECONDS:-30} s from its seed corpus (fuzz/corpus)"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for t in frame_decoder handshake deflate request; do
  mkdir -p "$OUT/fuzz/$t"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$OUT/fuzz/$t" corpus/"$t" -- \
     -max_total_time="${FUZZ_SECONDS:-30}" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 4)
done

step "NEON masking kernel: weft-proto's mask tests for aarch64 under qemu-user"
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
  cargo test --locked -p weft-proto --lib --target aarch64-unknown-linux-gnu -- mask utf8

step "build weft (profile ci: release optimisations, quicker to build) and the HTTP/2 and HTTP/3 bridge for Autobahn"
# The same packages and features as `cargo test` above (the whole workspace, its examples
# with their dev-dependencies), so this finds everything built: `-p weft-cli` alone unified
# other features and rebuilt some 70 crates, BoringSSL among them (~5 minutes).
cargo build --locked --profile ci --workspace --features weft-cli/http3 --bins --examples
WEFT="$ROOT/target/ci/weft"
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() { local p; for p in $(seq "$1" $(( $1 + 200 ))); do port_free "$p" && { echo "$p"; return; }; done; return 1; }

step "Python package: pip install ./bindings/python into a venv, then pytest over real sockets"
PYVENV="${WEFT_PY_VENV:-$HOME/.cache/weft-py}"
[[ -x "$PYVENV/bin/python" ]] || python3 -m venv "$PYVENV"
"$PYVENV/bin/pip" install -q pytest websockets==17.4 uvloop fastapi==0.165.0 uvicorn==0.54.0
"$PYVENV/bin/pip" install -q --force-reinstall --no-deps ./bindings/python
WEFT_BIN="$WEFT" "$PYVENV/bin/python" -m pytest -q -p no:cacheprovider bindings/python/tests

step "browser: weft serve's dashboard and chat pages in headless Chromium (playwright-core), also over TLS (HTTP/2 and HTTP/1.1)"
if ! command -v chromium >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
WPORT=$(pick_port 18080)
"$WEFT" serve --addr "127.0.0.1:$WPORT" > "$OUT/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do port_free "$WPORT" || break; sleep 0.05; done
b_rc=0
node tests/browser/pages.mjs "http://127.0.0.1:$WPORT" || b_rc=$?
kill -TERM $SERVE_PID; wait $SERVE_PID || b_rc=$?   # graceful shutdown must exit 0
[[ $b_rc -eq 0 ]] || { echo "browser test FAILED (rc=$b_rc); server log in $OUT/serve.log" >&2; exit 1; }
# Over TLS with a test CA: the chat with Chromium's defaults (it takes HTTP/2 extended CONNECT
# for the WebSocket when offered) and with HTTP/2 off (HTTP/1.1 upgrade); both must work.
command -v openssl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >/dev/null
WEFT="$WEFT" node tests/browser/tls.mjs

step "TypeScript client (clients/typescript): built output current, types, unit tests, end to end in Node and in Chromium"
(cd clients/typescript && npm ci --no-audit --no-fund --silent)
(cd clients/typescript && npm run --silent check && npm run --silent typecheck)
(cd clients/typescript && WEFT_BIN="$WEFT" WEFT_REQUIRE_BROWSER=1 npx vitest run --reporter=dot)

step "HTTP/2 interop with Node: its http2 module (extended CONNECT) and ws's frame codec, against weft client/bench and weft echo"
node tests/http2/node-h2.mjs "$WEFT"

step "Autobahn: server suite against weft echo, client suite with weft's Rust, Python sync and Python asyncio clients, and both over HTTP/2 and HTTP/3 (in parallel)"
SPORT=$(pick_port 19001); CPORT=$(pick_port $(( SPORT + 1 )))
export AUTOBAHN_TIMEOUT=3600  # four suites share two cores: ~35 min each with compression
[[ $QUICK == 1 ]] && export AUTOBAHN_NO_DEFLATE=1
"$WEFT" echo --addr "127.0.0.1:$SPORT" --deflate > "$OUT/echo.log" 2>&1 &
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true' EXIT
AUTOBAHN_OUTDIR="$OUT/autobahn-server" bash "$AB/run-server-suite.sh" "ws://127.0.0.1:$SPORT" > "$OUT/autobahn-server.txt" 2>&1 &
S_PID=$!
deflate_flag=(); [[ $QUICK == 1 ]] && deflate_flag=(--no-deflate)
AUTOBAHN_OUTDIR="$OUT/autobahn-client" AUTOBAHN_AGENT=weft bash "$AB/run-client-suite.sh" "$CPORT" -- \
  "$WEFT" autobahn-client {url} --agent {agent} "${deflate_flag[@]}" > "$OUT/autobahn-client.txt" 2>&1 &
C_PID=$!
# The Python clients (sync, and asyncio on uvloop) run the client suite too.
PSPORT=$(pick_port $(( CPORT + 1 ))); PAPORT=$(pick_port $(( PSPORT + 1 )))
# They share the Rust codec (compression included, covered by the Rust client's full run), so
# they skip the permessage-deflate sections 12/13, which are most of the suite's time.
py_deflate=(--no-deflate)
AUTOBAHN_NO_DEFLATE=1 AUTOBAHN_OUTDIR="$OUT/autobahn-py-sync" AUTOBAHN_AGENT=weft-py-sync bash "$AB/run-client-suite.sh" "$PSPORT" -- \
  "$PYVENV/bin/python" bindings/python/tests/autobahn_client.py {url} {agent} --mode sync "${py_deflate[@]}" \
  > "$OUT/autobahn-py-sync.txt" 2>&1 &
PS_PID=$!
AUTOBAHN_NO_DEFLATE=1 AUTOBAHN_OUTDIR="$OUT/autobahn-py-async" AUTOBAHN_AGENT=weft-py-async bash "$AB/run-client-suite.sh" "$PAPORT" -- \
  "$PYVENV/bin/python" bindings/python/tests/autobahn_client.py {url} {agent} --mode async --uvloop "${py_deflate[@]}" \
  > "$OUT/autobahn-py-async.txt" 2>&1 &
PA_PID=$!
# Over HTTP/2 (RFC 8441), both directions, through the byte-for-byte bridge (the suite speaks
# HTTP/1.1 only): fuzzingclient -> bridge -> weft echo's HTTP/2, and weft's HTTP/2 client ->
# bridge -> fuzzingserver. permessage-deflate (12/13) is left to the HTTP/1.1 runs: the codec
# is the same on every transport and those sections are most of the suite's time.
BRIDGE="$ROOT/target/ci/examples/bridge"
HSPORT=$(pick_port $(( PAPORT + 1 ))); HCPORT=$(pick_port $(( HSPORT + 1 ))); HBPORT=$(pick_port $(( HCPORT + 1 )))
"$BRIDGE" to-h2 "127.0.0.1:$HSPORT" "ws://127.0.0.1:$SPORT/" > "$OUT/bridge-to-h2.log" 2>&1 &
B1_PID=$!
"$BRIDGE" from-h2 "127.0.0.1:$HBPORT" "ws://127.0.0.1:$HCPORT/" > "$OUT/bridge-from-h2.log" 2>&1 &
B2_PID=$!
trap 'kill $ECHO_PID $B1_PID $B2_PID 2>/dev/null || true' EXIT
wait_port "$HSPORT"; wait_port "$HBPORT"
AUTOBAHN_NO_DEFLATE=1 AUTOBAHN_AGENT=weft-echo-h2 AUTOBAHN_OUTDIR="$OUT/autobahn-server-h2" \
  bash "$AB/run-server-suite.sh" "ws://127.0.0.1:$HSPORT" > "$OUT/autobahn-server-h2.txt" 2>&1 &
HS_PID=$!
AUTOBAHN_NO_DEFLATE=1 AUTOBAHN_OUTDIR="$OUT/autobahn-client-h2" AUTOBAHN_AGENT=weft-h2 bash "$AB/run-client-suite.sh" "$HCPORT" -- \
  "$WEFT" autobahn-client "ws://127.0.0.1:$HBPORT" --agent {agent} --http2 --no-deflate > "$OUT/autobahn-client-h2.txt" 2>&1 &
HC_PID=$!
# Over HTTP/3 (RFC 9220) the same way: fuzzingclient -> bridge -> `weft echo --tls-cert`'s
# HTTP/3 (QUIC on the TLS port number), and weft's HTTP/3 client -> bridge -> fuzzingserver,
# with a throwaway certificate for localhost.
H3DIR="$OUT/h3-cert"; mkdir -p "$H3DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$H3DIR/key.pem" -out "$H3DIR/cert.pem" 2>/dev/null
TSPORT=$(pick_port $(( HBPORT + 1 ))); H3SPORT=$(pick_port $(( TSPORT + 1 ))); H3CPORT=$(pick_port $(( H3SPORT + 1 ))); H3BPORT=$(pick_port $(( H3CPORT + 1 )))
"$WEFT" echo --addr "127.0.0.1:$TSPORT" --tls-cert "$H3DIR/cert.pem" --tls-key "$H3DIR/key.pem" > "$OUT/echo-tls.log" 2>&1 &
TECHO_PID=$!
wait_port "$TSPORT"
"$BRIDGE" to-h3 "127.0.0.1:$H3SPORT" "wss://localhost:$TSPORT/" "$H3DIR/cert.pem" > "$OUT/bridge-to-h3.log" 2>&1 &
B3_PID=$!
"$BRIDGE" from-h3 "127.0.0.1:$H3BPORT" "ws://127.0.0.1:$H3CPORT/" "$H3DIR/cert.pem" "$H3DIR/key.pem" > "$OUT/bridge-from-h3.log" 2>&1 &
B4_PID=$!
trap 'kill $ECHO_PID $B1_PID $B2_PID $TECHO_PID $B3_PID $B4_PID 2>/dev/null || true' EXIT
wait_port "$H3SPORT"; sleep 0.5
AUTOBAHN_NO_DEFLATE=1 AUTOBAHN_AGENT=weft-echo-h3 AUTOBAHN_OUTDIR="$OUT/autobahn-server-h3" \
  bash "$AB/run-server-suite.sh" "ws://127.0.0.1:$H3SPORT" > "$OUT/autobahn-server-h3.txt" 2>&1 &
H3S_PID=$!
AUTOBAHN_NO_DEFLATE=1 AUTOBAHN_OUTDIR="$OUT/autobahn-client-h3" AUTOBAHN_AGENT=weft-h3 bash "$AB/run-client-suite.sh" "$H3CPORT" -- \
  "$WEFT" autobahn-client "wss://localhost:$H3BPORT" --agent {agent} --http3 --ca-file "$H3DIR/cert.pem" --no-deflate \
  > "$OUT/autobahn-client-h3.txt" 2>&1 &
H3C_PID=$!
# The server suite against the event-driven core on each backend (`weft echo --core epoll` and
# `--core io-uring`, one loop each). Of the compression sections it runs 12.1 and 13.1 (every
# parameter combination on small messages): the deflate codec is the one the tokio core's full
# run covers, and the larger cases are most of the suite's time.
ESPORT=$(pick_port $(( H3BPORT + 1 ))); EUPORT=$(pick_port $(( ESPORT + 1 )))
"$WEFT" echo --core epoll --threads 1 --addr "127.0.0.1:$ESPORT" --deflate > "$OUT/echo-epoll.log" 2>&1 &
EECHO_PID=$!
"$WEFT" echo --core io-uring --threads 1 --addr "127.0.0.1:$EUPORT" --deflate > "$OUT/echo-io-uring.log" 2>&1 &
UECHO_PID=$!
trap 'kill $ECHO_PID $B1_PID $B2_PID $TECHO_PID $B3_PID $B4_PID $EECHO_PID $UECHO_PID 2>/dev/null || true' EXIT
AUTOBAHN_AGENT=weft-echo-epoll AUTOBAHN_OUTDIR="$OUT/autobahn-server-epoll" bash "$AB/run-server-suite.sh" \
  "ws://127.0.0.1:$ESPORT" "*" "12.2.*,12.3.*,12.4.*,12.5.*,13.2.*,13.3.*,13.4.*,13.5.*,13.6.*,13.7.*" \
  > "$OUT/autobahn-server-epoll.txt" 2>&1 &
ES_PID=$!
uring_says() { sed 's/\x1b\[[0-9;]*m//g' "$OUT/echo-io-uring.log" | grep -q "core=io_uring"; }
for _ in $(seq 100); do uring_says && break; sleep 0.05; done
uring_says || { echo "weft echo --core io-uring did not run on io_uring:" >&2; cat "$OUT/echo-io-uring.log" >&2; exit 1; }
AUTOBAHN_AGENT=weft-echo-io-uring AUTOBAHN_OUTDIR="$OUT/autobahn-server-io-uring" bash "$AB/run-server-suite.sh" \
  "ws://127.0.0.1:$EUPORT" "*" "12.2.*,12.3.*,12.4.*,12.5.*,13.2.*,13.3.*,13.4.*,13.5.*,13.6.*,13.7.*" \
  > "$OUT/autobahn-server-io-uring.txt" 2>&1 &
EU_PID=$!
s_rc=0; c_rc=0; ps_rc=0; pa_rc=0; hs_rc=0; hc_rc=0; h3s_rc=0; h3c_rc=0; es_rc=0; eu_rc=0
wait $S_PID || s_rc=$?
wait $C_PID || c_rc=$?
wait $PS_PID || ps_rc=$?
wait $PA_PID || pa_rc=$?
wait $HS_PID || hs_rc=$?
wait $HC_PID || hc_rc=$?
wait $H3S_PID || h3s_rc=$?
wait $H3C_PID || h3c_rc=$?
wait $ES_PID || es_rc=$?
wait $EU_PID || eu_rc=$?
for f in server client py-sync py-async server-h2 client-h2 server-h3 client-h3 server-epoll server-io-uring; do
  echo "--- autobahn-$f"; cat "$OUT/autobahn-$f.txt"
done
kill $ECHO_PID $B1_PID $B2_PID $TECHO_PID $B3_PID $B4_PID $EECHO_PID $UECHO_PID 2>/dev/null || true
if [[ $s_rc -ne 0 || $c_rc -ne 0 || $ps_rc -ne 0 || $pa_rc -ne 0 || $hs_rc -ne 0 || $hc_rc -ne 0 || $h3s_rc -ne 0 || $h3c_rc -ne 0 || $es_rc -ne 0 || $eu_rc -ne 0 ]]; then
  echo "Autobahn FAILED (server rc=$s_rc, client rc=$c_rc, python sync rc=$ps_rc, python async rc=$pa_rc," \
       "server over HTTP/2 rc=$hs_rc, client over HTTP/2 rc=$hc_rc, server over HTTP/3 rc=$h3s_rc," \
       "client over HTTP/3 rc=$h3c_rc, server on the epoll core rc=$es_rc, on the io_uring core rc=$eu_rc);" \
       "reports in $OUT" >&2
  exit 1
fi

step "all tests passed in $(( $(date +%s) - t_start )) s"
