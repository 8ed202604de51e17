#!/usr/bin/env bash
# Runs the whole test suite several times in a row while the load generator
# keeps a separate node busy, to show that a green run is not luck and that
# the suite does not fail on a loaded machine without a defect (issue 22).
#
#   bash tests/repeat-under-load.sh [RUNS] [OUT_DIR]
#
# RUNS defaults to 20. Each run is `cargo test --workspace --all-targets`
# (what tests/run-all.sh runs, without fmt/clippy/smoke); its output goes to
# OUT_DIR/run-N.log, a line per run to OUT_DIR/summary.txt. Beside it, a
# release node on a free loopback port takes `loadgen relay` (LOAD_PAIRS
# pairs, LOAD_RATE signals/s, 60 s per round, rounds repeated until the last
# run ends); the load's reports go to OUT_DIR/load.log. Exits non-zero when
# any run failed.
#
# Environment: LOAD_PAIRS (default 50), LOAD_RATE (default 10000),
# LOADGEN and SWITCHBOARD (prebuilt release binaries; built otherwise).
set -uo pipefail
cd "$(dirname "$0")/.."

runs="${1:-20}"
out="${2:-$(mktemp -d -t switchboard-repeat.XXXXXX)}"
mkdir -p "$out"
pairs="${LOAD_PAIRS:-50}"
rate="${LOAD_RATE:-10000}"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$out/summary.txt" >&2; }

if [ -z "${LOADGEN:-}" ] || [ -z "${SWITCHBOARD:-}" ]; then
  cargo build --release --quiet -p switchboard -p switchboard-loadgen --bins || exit 2
fi
loadgen="${LOADGEN:-${CARGO_TARGET_DIR:-target}/release/loadgen}"
node_bin="${SWITCHBOARD:-${CARGO_TARGET_DIR:-target}/release/switchboard}"
# The suite's own binaries, built before the clock starts.
cargo test --workspace --all-targets --no-run --quiet 2>/dev/null || exit 2

node_log="$out/node.log"
SWITCHBOARD_SERVER__LISTEN=127.0.0.1:0 SWITCHBOARD_STUN__ENABLED=false \
  SWITCHBOARD_LOG__LEVEL=info "$node_bin" >"$node_log" 2>&1 &
node_pid=$!
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -nE 's/.*listening on ([0-9.]+:[0-9]+).*/\1/p' "$node_log" | head -n 1)"
  [ -n "$addr" ] && break
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$addr" ] || { log "the load node did not start"; cat "$node_log" >&2; exit 2; }

(
  while kill -0 "$node_pid" 2>/dev/null; do
    "$loadgen" relay --url "ws://$addr/ws" --pairs "$pairs" --rate "$rate" --secs 60 \
      --server-pid "$node_pid" >>"$out/load.log" 2>&1 || sleep 1
  done
) &
load_pid=$!
stop() {
  kill "$load_pid" 2>/dev/null
  kill -TERM "$node_pid" 2>/dev/null
  wait "$load_pid" "$node_pid" 2>/dev/null
}
trap stop EXIT

log "load: loadgen relay, $pairs pairs at $rate signals/s, against $addr (pid $node_pid)"
passed=0
failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  TEST_SKIPS_FILE="$out/skips-$i.txt" timeout --kill-after=30 3600 \
    cargo test --workspace --all-targets >"$out/run-$i.log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    log "run $i: ok (${took}s)"
  else
    failed=$((failed + 1))
    log "run $i: FAILED (exit $rc, ${took}s): $(grep -E '^    [a-z_:]+$' "$out/run-$i.log" | tr -d ' ' | sort -u | tr '\n' ' ')"
  fi
done
rounds=$(grep -c '"scenario":"relay"' "$out/load.log" 2>/dev/null || echo 0)
lost=$(grep -o '"lost":[0-9]*' "$out/load.log" | awk -F: '{s+=$2} END {print s+0}')
log "load: $rounds relay rounds reported beside the runs, $lost signals lost in them"
log "result: $passed of $runs runs passed, $failed failed (logs in $out)"
[ "$failed" -eq 0 ]
