#!/usr/bin/env bash
# Cluster and rendezvous benchmarks of docs/BENCHMARKS.md ("Cluster" and
# "Pairing and STUN"): fresh nodes (and a fresh Redis) for every measurement,
# every JSON summary kept, medians and spread printed at the end.
#
# Usage: loadtest/cluster-bench.sh [RUNS] [OUTDIR]    (defaults: 3, /tmp/sb-cluster-DATE)
#
# Environment:
#   SWITCHBOARD, LOADGEN   prebuilt binaries (default: cargo build --release
#                          -p switchboard -p switchboard-loadgen; see lib.sh)
#   REDIS_SERVER           redis-server binary (default: redis-server on PATH)
#   SB_CB_ONLY             space-separated subset of:
#                            relay-sat relay-10k relay-20k relay-30k relay-30k-b4 idle
#                                                   (each as `single` and `cluster`)
#                            pairing stun                         (three nodes / one node;
#                                                                 pairing also at 5,000 pair/s)
#   SB_CB_PORT             first port used (default 18180): Redis on it, nodes on the next ones
#   SB_CB_PAIRING_WORKERS  workers of the pairing run (default 10000)
#   SB_CB_QUIET_WAIT       wait at most this many seconds for a quiet machine before
#                          each measurement (default 60)
#
# `single` is one node with the embedded store (no Redis); `cluster` is two
# nodes through one Redis with A of every pair on one node and B on the other.
# Loopback only; every step is bounded in count and time.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-3}"
out="${2:-/tmp/sb-cluster-$(date +%Y%m%d-%H%M%S)}"
base="${SB_CB_PORT:-18180}"
only="${SB_CB_ONLY:-relay-sat relay-10k relay-20k relay-30k idle pairing stun}"
src="127.0.0.2-127.0.0.40"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile

urls=""
pids=""
# start_nodes NAME COUNT REDIS(0|1) [STUN(0|1)]: fresh Redis on $base, nodes on base+1..
start_nodes() {
  sb_start_nodes "$1" "$2" "$base" "$3" "${4:-0}" "$out" || exit 1
  urls="$SB_URLS"
  pids="$SB_PIDS"
}
stop_all() { sb_stop_all; }
trap stop_all EXIT

wait_quiet() { sb_wait_quiet 15 "${SB_CB_QUIET_WAIT:-60}"; }

# measure NAME RUN NODES REDIS STUN -- loadgen args (URLs and pids are appended)
measure() {
  local name="$1" i="$2" n="$3" redis="$4" stun="$5"
  shift 6
  wait_quiet
  start_nodes "$name-$i" "$n" "$redis" "$stun"
  sleep 1
  echo "cluster-bench: run $i $name ($urls)" >&2
  "$LOADGEN" "$@" --urls "$urls" --server-pid "$pids" >"$out/$name-$i.json" 2>"$out/$name-$i.log" || true
  if [ "$redis" = 1 ]; then
    redis-cli -p "$base" info memory | grep -E '^used_memory:' >>"$out/$name-$i.log" || true
  fi
  stop_all
  sleep 2
}

sb_machine_info >>"$out/machine.txt"

first="${SB_CB_FIRST_RUN:-1}"
for i in $(seq "$first" $((first + runs - 1))); do
  for s in $only; do
    case "$s" in
      relay-sat | relay-10k | relay-20k | relay-30k | relay-30k-b4 | idle)
        case "$s" in
          relay-sat) args=(relay --pairs 1000 --rate 0 --window 64 --secs 8) ;;
          relay-10k) args=(relay --pairs 1000 --rate 10000 --secs 8) ;;
          relay-20k) args=(relay --pairs 1000 --rate 20000 --secs 8) ;;
          relay-30k) args=(relay --pairs 1000 --rate 30000 --secs 8) ;;
          relay-30k-b4) args=(relay --pairs 1000 --rate 30000 --burst 4 --secs 8) ;;
          idle) args=(idle --conns 10000 --room-size 10 --source-ips "$src" --hold-secs 3) ;;
        esac
        measure "$s-single" "$i" 1 0 0 -- "${args[@]}"
        measure "$s-cluster" "$i" 2 1 0 -- "${args[@]}"
        ;;
      pairing)
        w="${SB_CB_PAIRING_WORKERS:-10000}"
        measure pairing-cluster3 "$i" 3 1 0 -- pairing --workers "$w" --source-ips "$src" --concurrency 100
        measure pairing-5k-cluster3 "$i" 3 1 0 -- pairing --workers "$w" --rate 5000 --source-ips "$src" --concurrency 100
        ;;
      stun)
        # one node; STUN on base+11
        wait_quiet
        start_nodes "stun-$i" 1 0 1
        sleep 1
        "$LOADGEN" stun --target "127.0.0.1:$((base + 11))" --sockets 4 --window 64 --secs 5 \
          --server-pid "$pids" >"$out/stun-$i.json" 2>"$out/stun-$i.log" || true
        stop_all
        sleep 1
        ;;
      *) echo "cluster-bench: unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done

cat "$out/machine.txt"
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
def get(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
relay = [("delivered_per_sec", "delivered/s"), ("latency.p50_us", "p50 µs"), ("latency.p99_us", "p99 µs"),
         ("lost", "lost"), ("duplicated", "duplicated"), ("reordered", "reordered"),
         ("cpu.server_cpu_pct", "nodes CPU %"), ("cpu.loadgen_cpu_pct", "loadgen CPU %"),
         ("cpu.machine_cpu_pct", "machine CPU %"), ("cpu.others_cpu_pct", "others CPU %")]
fields = {}
for s in ["relay-sat", "relay-10k", "relay-20k", "relay-30k", "relay-30k-b4"]:
    for m in ["single", "cluster"]:
        fields[f"{s}-{m}"] = relay
for m in ["single", "cluster"]:
    fields[f"idle-{m}"] = [("server_rss_per_conn_bytes", "RSS/conn (B)"), ("connects_per_sec", "connects/s"),
                           ("failed", "failed"), ("setup_cpu.others_cpu_pct", "others CPU %")]
fields["pairing-cluster3"] = [("paired", "paired"), ("all_paired_secs", "all paired (s)"),
    ("pairings_per_sec", "pairings/s"), ("pair_latency.p50_us", "pair→paired p50 µs"),
    ("pair_latency.p99_us", "pair→paired p99 µs"), ("pair_latency.max_us", "max µs"),
    ("asymmetric", "asymmetric"), ("paired_twice", "paired twice"), ("failed", "failed")]
fields["pairing-5k-cluster3"] = fields["pairing-cluster3"]
fields["stun"] = [("responses_per_sec", "responses/s"), ("lost", "unanswered"), ("rtt.p50_us", "RTT p50 µs"),
                  ("rtt.p99_us", "RTT p99 µs"), ("cpu.server_cpu_pct", "node CPU %")]
med = {}
print("| measurement | metric | median | min | max | runs |")
print("|---|---|---|---|---|---|")
for name, fs in fields.items():
    runs = []
    for p in sorted(glob.glob(os.path.join(out, f"{name}-[0-9]*.json"))):
        try:
            runs.append(json.load(open(p)))
        except (ValueError, OSError):
            pass
    if not runs:
        continue
    for path, label in fs:
        vals = [v for v in (get(r, path) for r in runs) if isinstance(v, (int, float))]
        if vals:
            fmt = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:g}"
            med[(name, path)] = statistics.median(vals)
            print(f"| {name} | {label} | {fmt(statistics.median(vals))} | {fmt(min(vals))} | {fmt(max(vals))} | {len(vals)} |")
print()
print("| ratio cluster / single (medians) | value |")
print("|---|---|")
for s, path in [("relay-sat", "delivered_per_sec"), ("relay-10k", "latency.p50_us"), ("relay-10k", "cpu.server_cpu_pct"), ("relay-10k", "latency.p99_us"),
                ("relay-20k", "delivered_per_sec"), ("relay-20k", "latency.p50_us"), ("relay-20k", "latency.p99_us"),
                ("relay-30k", "delivered_per_sec"), ("relay-30k", "latency.p50_us"), ("relay-30k", "latency.p99_us"), ("idle", "server_rss_per_conn_bytes")]:
    a, b = med.get((f"{s}-cluster", path)), med.get((f"{s}-single", path))
    if a is not None and b:
        print(f"| {s} {path} | {a / b:.2f} |")
PY
echo "cluster-bench: results in $out" >&2
