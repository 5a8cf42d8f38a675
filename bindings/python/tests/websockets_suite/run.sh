#!/usr/bin/env bash
# websockets' own client tests (tests/asyncio/test_client.py and tests/sync/test_client.py of
# websockets 17.4) against websockets itself, against weft's drop-in (weft.enable_monkeypatch())
# and against picows.websockets; prints the pass counts of each.
#
#   WEBSOCKETS_SRC=/path/to/websockets-17.4 bash bindings/python/tests/websockets_suite/run.sh [IMPL...]
#
# WEBSOCKETS_SRC: a checkout of the websockets repository at tag 17.4 (the sdist on PyPI has no
# tests). IMPL: real, weft, picows (default: all three). PYTHON (default: python3) must have
# pytest, pytest-timeout, websockets==17.4, the weft package and, for picows, picows installed.
# The proxy tests need mitmproxy and are skipped without it, as in websockets' own CI without
# it. WEBSOCKETS_TESTS_TIMEOUT_FACTOR (default 10 here) stretches the suite's millisecond
# timeouts: at 1, a loaded machine makes websockets itself fail test_reconnect (its 3 ms
# open_timeout expires) and loop forever. Not part of scripts/test.sh (needs that checkout).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="${WEBSOCKETS_SRC:?set WEBSOCKETS_SRC to a websockets 17.4 checkout}"
PY="${PYTHON:-python3}"
IMPLS=("$@")
[[ ${#IMPLS[@]} -eq 0 ]] && IMPLS=(real weft picows)
export WEBSOCKETS_TESTS_TIMEOUT_FACTOR="${WEBSOCKETS_TESTS_TIMEOUT_FACTOR:-10}"
"$PY" -c 'import websockets, sys; v = websockets.__version__; print("websockets", v); sys.exit(v != "17.4")' ||
  { echo "error: needs websockets 17.4" >&2; exit 2; }
summary=()
for impl in "${IMPLS[@]}"; do
  for mod in asyncio sync; do
    log="$(mktemp)"
    (cd "$SRC" && WEFT_SUITE_IMPL="$impl" PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" \
      timeout 600 "$PY" -m pytest -q -p no:cacheprovider -p suite_plugin --timeout 60 -rfE \
      "tests/$mod/test_client.py") >"$log" 2>&1
    line="$(grep -E '^(=+ )?[0-9]+ (passed|failed)|no tests ran' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ in [0-9.]*s.*//')"
    echo "---- $impl $mod: ${line:-no result (see $log)}"
    grep -E '^(FAILED|ERROR) tests/' "$log" | sed 's/^/     /'
    summary+=("$impl $mod: ${line:-?}")
    rm -f "$log"
  done
done
echo
printf '%s\n' "${summary[@]}"
