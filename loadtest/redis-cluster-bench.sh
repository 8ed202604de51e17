#!/usr/bin/env bash
# Cross-node relay through one Redis vs through a Redis Cluster (docs/BENCHMARKS.md,
# "Redis Cluster"): the same two nodes and the same load, with the bus and the
# store on
#   redis     one redis-server (redis://)
#   cluster1  a Redis Cluster of one primary (redis-cluster://): cluster mode's own cost
#   cluster3  a Redis Cluster of three primaries: sharded pub/sub over three shards
# Fresh Redis processes and nodes for every measurement; every JSON summary kept;
# medians, spread, the Redis CPU per signal (all redis-server processes, from
# /proc) and the ratios to `redis` printed at the end.
#
# Usage: loadtest/redis-cluster-bench.sh [RUNS] [OUTDIR]   (defaults: 3, /tmp/sb-rcluster-DATE)
#
# Environment:
#   SWITCHBOARD, LOADGEN   prebuilt binaries (default: cargo build --release; see lib.sh)
#   SB_RC_ONLY             subset of: redis cluster1 cluster3 (default: all three)
#   SB_RC_LOADS            subset of: 10k sat (default: both)
#   SB_RC_PORT             first port (default 18280): nodes on +1, +2; Redis on +20..+22,
#                          cluster bus ports on +40..+42
#   SB_RC_QUIET_WAIT       wait at most this many seconds for a quiet machine (default 60)
#
# The relay load is `loadgen relay --pairs 1000` with A of every pair on node 1
# and B on node 2, so every signal crosses nodes (see cluster-bench.sh). Two
# nodes mean two node channels, so at most two of three shards carry relay
# traffic (which ones: see the per-process Redis CPU in each .log).
# Loopback only; every wait is bounded.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-3}"
out="${2:-/tmp/sb-rcluster-$(date +%Y%m%d-%H%M%S)}"
base="${SB_RC_PORT:-18280}"
modes="${SB_RC_ONLY:-redis cluster1 cluster3}"
loads="${SB_RC_LOADS:-10k sat}"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile

redis_pids=()
redis_ports=()

# start_redis MODE: one server (redis) or a cluster of 1 or 3 primaries; sets
# SWITCHBOARD_CLUSTER__REDIS_URL for the nodes. Returns 1 when it does not come up.
start_redis() {
  local mode="$1" n i port hosts=""
  case "$mode" in
    redis) n=1 ;;
    cluster1) n=1 ;;
    cluster3) n=3 ;;
  esac
  redis_pids=()
  redis_ports=()
  rm -f "$out"/nodes-*.conf
  for i in $(seq 0 $((n - 1))); do
    port=$((base + 20 + i))
    local extra=()
    if [ "$mode" != redis ]; then
      # A lone node learns no address of its own: announce it (else CLUSTER SLOTS
      # names host "" and clients cannot route).
      extra=(--cluster-enabled yes --cluster-port $((base + 40 + i)) --cluster-announce-ip 127.0.0.1
        --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000)
    fi
    "$SB_REDIS_BIN" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --maxclients 10000 --dir "$out" "${extra[@]}" >"$out/redis-$mode-$port.log" 2>&1 &
    redis_pids+=($!)
    redis_ports+=("$port")
    hosts="${hosts:+$hosts,}127.0.0.1:$port"
  done
  for port in "${redis_ports[@]}"; do
    local up=0
    for _ in $(seq 1 50); do
      if redis-cli -p "$port" ping >/dev/null 2>&1; then up=1; break; fi
      sleep 0.1
    done
    [ "$up" = 1 ] || { echo "redis-cluster-bench: redis on $port did not start" >&2; return 1; }
  done
  if [ "$mode" = redis ]; then
    export SWITCHBOARD_CLUSTER__REDIS_URL="redis://127.0.0.1:${redis_ports[0]}"
    return 0
  fi
  if [ "$n" = 1 ]; then
    redis-cli -p "${redis_ports[0]}" cluster addslotsrange 0 16383 >/dev/null
  else
    local create=()
    for port in "${redis_ports[@]}"; do create+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${create[@]}" --cluster-yes >/dev/null </dev/null
  fi
  local ok=0
  for _ in $(seq 1 100); do
    ok=1
    for port in "${redis_ports[@]}"; do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.2
  done
  [ "$ok" = 1 ] || { echo "redis-cluster-bench: cluster not ok after 20 s" >&2; return 1; }
  export SWITCHBOARD_CLUSTER__REDIS_URL="redis-cluster://$hosts"
}

stop_redis() {
  local p
  for p in "${redis_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${redis_pids[@]}"; do sb_reap "$p"; done
  redis_pids=()
}

stop_everything() { sb_stop_all; stop_redis; }
trap stop_everything EXIT

# measure MODE LOAD RUN -- loadgen args
measure() {
  local mode="$1" load="$2" i="$3" name="$1-$2-$3" p before after
  shift 4
  sb_wait_quiet 15 "${SB_RC_QUIET_WAIT:-60}"
  start_redis "$mode" || exit 1
  export SWITCHBOARD_CLUSTER__KEY_PREFIX="sb-$name-$$"
  # REDIS=0: the nodes take the Redis URL exported above.
  sb_start_nodes "$name" 2 "$base" 0 0 "$out" || exit 1
  sleep 1
  before=()
  for p in "${redis_pids[@]}"; do before+=("$(sb_cpu_ticks "$p")"); done
  echo "redis-cluster-bench: $name ($SB_URLS)" >&2
  "$LOADGEN" "$@" --urls "$SB_URLS" --server-pid "$SB_PIDS" >"$out/$name.json" 2>"$out/$name.log" || true
  local k=0 total=0 per=""
  for p in "${redis_pids[@]}"; do
    after="$(sb_cpu_ticks "$p")"
    per="$per ${redis_ports[$k]}:$((after - ${before[$k]}))"
    total=$((total + after - ${before[$k]}))
    k=$((k + 1))
  done
  echo "redis_cpu_ticks_total $total" >>"$out/$name.log"
  echo "redis_cpu_ticks_per_process$per" >>"$out/$name.log"
  python3 - "$out/$name.json" "$total" <<'PY'
import json, sys
p, ticks = sys.argv[1], int(sys.argv[2])
try:
    d = json.load(open(p))
except (ValueError, OSError):
    sys.exit(0)
d["redis_cpu_secs"] = ticks / 100
n = d.get("delivered") or 0
d["redis_cpu_us_per_signal"] = ticks * 1e4 / n if n else None
json.dump(d, open(p, "w"))
PY
  sb_stop_all
  stop_redis
  unset SWITCHBOARD_CLUSTER__REDIS_URL SWITCHBOARD_CLUSTER__KEY_PREFIX
  sleep 2
}

sb_machine_info >>"$out/machine.txt"

for i in $(seq 1 "$runs"); do
  for load in $loads; do
    case "$load" in
      10k) args=(relay --pairs 1000 --rate 10000 --secs 8) ;;
      sat) args=(relay --pairs 1000 --rate 0 --window 64 --secs 8) ;;
      *) echo "redis-cluster-bench: unknown load $load" >&2; exit 2 ;;
    esac
    for mode in $modes; do
      measure "$mode" "$load" "$i" -- "${args[@]}"
    done
  done
done

cat "$out/machine.txt"
python3 - "$out" "$modes" "$loads" <<'PY'
import glob, json, os, statistics, sys
out, modes, loads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def get(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
fields = [("delivered_per_sec", "delivered/s"), ("latency.p50_us", "p50 µs"), ("latency.p99_us", "p99 µs"),
          ("lost", "lost"), ("duplicated", "duplicated"), ("reordered", "reordered"),
          ("cpu.server_cpu_pct", "nodes CPU %"), ("redis_cpu_us_per_signal", "Redis CPU µs/signal"),
          ("cpu.machine_cpu_pct", "machine CPU %")]
med = {}
print("| load | mode | metric | median | min | max | runs |")
print("|---|---|---|---|---|---|---|")
for load in loads:
    for mode in modes:
        runs = []
        for p in sorted(glob.glob(os.path.join(out, f"{mode}-{load}-[0-9]*.json"))):
            try:
                runs.append(json.load(open(p)))
            except (ValueError, OSError):
                pass
        for path, label in fields:
            vals = [v for v in (get(r, path) for r in runs) if isinstance(v, (int, float))]
            if vals:
                fmt = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
                med[(load, mode, path)] = statistics.median(vals)
                print(f"| {load} | {mode} | {label} | {fmt(statistics.median(vals))} | {fmt(min(vals))} | {fmt(max(vals))} | {len(vals)} |")
print()
print("| ratio to `redis` (medians) | load | cluster1 | cluster3 |")
print("|---|---|---|---|")
for load in loads:
    for path, label in fields[:3] + fields[6:8]:
        b = med.get((load, "redis", path))
        cells = []
        for m in ["cluster1", "cluster3"]:
            a = med.get((load, m, path))
            cells.append(f"{a / b:.2f}" if a is not None and b else "")
        print(f"| {label} | {load} | {cells[0]} | {cells[1]} |")
PY
echo "redis-cluster-bench: results in $out" >&2
