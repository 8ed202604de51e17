#!/usr/bin/env bash
# Rolling restart with zero loss (docs/BENCHMARKS.md, "Rolling restart"):
# three release nodes behind a real nginx (config/nginx.conf, addresses
# rewritten), one real redis-server, and `loadgen rolling`: PAIRS pairs of
# resumable sessions, each A signalling its B RATE times a second through
# nginx. While they run, each node in turn is stopped (SIGTERM: it drains,
# hands its sessions over and exits; or SIGKILL with MODE=kill9), started
# again on its port, and waited for until /readyz answers. The summary counts
# lost, duplicated and reordered signals, resumes and the time peers were
# away.
#
# Usage: loadtest/rolling-restart.sh [OUTDIR]   (default /tmp/sb-rolling-DATE)
#
# Environment:
#   PAIRS (1000), RATE (5 signals/s per sender), SETTLE (8 s between restarts),
#   MODE (sigterm | kill9), SB_RR_PORT (first port, default 18380: Redis on it,
#   nginx on +10, nodes on +1..+3), SWITCHBOARD, LOADGEN (prebuilt binaries).
# Exit status: loadgen's (0 clean, 3 with losses/duplicates/reordering).
# Loopback only; every wait is bounded.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:-/tmp/sb-rolling-$(date +%Y%m%d-%H%M%S)}"
pairs="${PAIRS:-1000}"
rate="${RATE:-5}"
settle="${SETTLE:-8}"
mode="${MODE:-sigterm}"
base="${SB_RR_PORT:-18380}"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile
command -v nginx >/dev/null || { echo "nginx is needed (apt-get install nginx-light)" >&2; exit 1; }

sb_start_redis "$base" "$out/redis.log"
prefix="sb-rolling-$$-$RANDOM"
pids=()
gen=0
start_node() { # start_node I: a fresh node id each time, as a new pod gets one
  local i="$1"
  gen=$((gen + 1))
  (
    cd "$root"
    export SWITCHBOARD_SERVER__LISTEN="127.0.0.1:$((base + i))" SWITCHBOARD_LOG__LEVEL=info \
      SWITCHBOARD_SERVER__NODE_ID="roll-$i-$gen" SWITCHBOARD_STUN__ENABLED=false \
      SWITCHBOARD_CLUSTER__REDIS_URL="redis://127.0.0.1:$base" \
      SWITCHBOARD_CLUSTER__KEY_PREFIX="$prefix" \
      SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS=10000 SWITCHBOARD_SHUTDOWN__RECONNECT_JITTER_MS=500
    exec "$SWITCHBOARD"
  ) >>"$out/node-$i.log" 2>&1 &
  pids[i]=$!
}
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
wait_ready() { # wait_ready I -> milliseconds taken
  local i="$1" t0
  t0=$(date +%s%N)
  for _ in $(seq 1 200); do
    if curl -fsS -m 1 "http://127.0.0.1:$((base + i))/readyz" >/dev/null 2>&1; then
      ms_since "$t0"
      return 0
    fi
    sleep 0.1
  done
  echo "node $i not ready after 20 s (see $out/node-$i.log)" >&2
  return 1
}
cleanup() {
  [ -n "${lg:-}" ] && kill -TERM "$lg" 2>/dev/null || true
  [ -n "${ngx:-}" ] && kill -TERM "$ngx" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  [ -n "${SB_REDIS_PID:-}" ] && kill -TERM "$SB_REDIS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for i in 1 2 3; do start_node "$i"; done
for i in 1 2 3; do wait_ready "$i" >/dev/null; done

# nginx from the repo's config, on our ports.
conf="$out/nginx.conf"
sed -e "s/listen 127.0.0.1:8080;/listen 127.0.0.1:$((base + 10));/" \
  -e "s/127.0.0.1:8081 /127.0.0.1:$((base + 1)) /" \
  -e "s/127.0.0.1:8082 /127.0.0.1:$((base + 2)) /" \
  -e "s/127.0.0.1:8083 /127.0.0.1:$((base + 3)) /" \
  -e "s#/tmp/switchboard-nginx#$out/nginx#g" "$root/config/nginx.conf" >"$conf"
grep -q "127.0.0.1:$((base + 3)) " "$conf" || { echo "config/nginx.conf changed shape" >&2; exit 1; }
nginx -p "$out" -c "$conf" 2>"$out/nginx.log" &
ngx=$!
for _ in $(seq 1 50); do
  curl -s -m 1 -o /dev/null "http://127.0.0.1:$((base + 10))/healthz" && break
  sleep 0.1
done

# Long enough for three restarts with SETTLE seconds around each.
secs=$((settle * 4 + 3 * 6))
sb_machine_info >"$out/machine.txt"
"$LOADGEN" rolling --url "ws://127.0.0.1:$((base + 10))/ws" --source-ips 127.0.0.2-127.0.0.40 \
  --pairs "$pairs" --rate "$rate" --secs "$secs" --drain-secs 20 \
  $([ "$mode" = kill9 ] && echo --allow-loss) >"$out/rolling.json" 2>"$out/rolling.log" &
lg=$!
sleep "$settle"
: >"$out/restarts.txt"
for i in 1 2 3; do
  t0=$(date +%s%N)
  if [ "$mode" = kill9 ]; then
    kill -KILL "${pids[i]}"
  else
    kill -TERM "${pids[i]}"
  fi
  # Bounded: the drain's grace period is 10 s.
  for _ in $(seq 1 300); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
  wait "${pids[i]}" 2>/dev/null || true
  down=$(ms_since "$t0")
  start_node "$i"
  up=$(wait_ready "$i")
  echo "node $i ($mode): exited after ${down} ms, ready again ${up} ms after its restart" | tee -a "$out/restarts.txt" >&2
  sleep "$settle"
done
rc=0
wait "$lg" || rc=$?
lg=""
cat "$out/rolling.json"
echo "restarts: $out/restarts.txt; logs: $out" >&2
exit "$rc"
