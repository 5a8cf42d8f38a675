# shellcheck shell=bash
# Shared by compare.sh and capacity.sh: build weft and the peers, set up their runtimes.
# Sets WEFT, PEERS, PYVENV and raises the open-file limit.
bench_setup() {
  PYVENV="${WEFT_BENCH_VENV:-$HOME/.cache/weft-bench-py}"
  cargo build --release -q -p weft-cli
  (cd bench/peers/rust && cargo build --release -q)
  (cd bench/peers/node && npm install --no-audit --no-fund -s >/dev/null)
  [[ -x "$PYVENV/bin/python" ]] || python3 -m venv "$PYVENV"
  "$PYVENV/bin/pip" install -q -r bench/peers/python/requirements.txt
  WEFT="$ROOT/target/release/weft"
  PEERS="$ROOT/bench/peers/rust/target/release/weft-bench-peers"
  ulimit -n "$(ulimit -Hn)"
}
