#!/usr/bin/env bash
# Scale-out flatness: node CPU time per delivered signal, for a fixed-rate relay,
# as the number of connected peers and the number of nodes grow. The issue's
# target: per-signal CPU cost flat (within 15 %) from 1,000 to 57,000 connected
# peers and from 2 to 3 nodes.
#
# Usage: loadtest/scaleout.sh [RUNS] [OUTDIR]     (defaults: 3, /tmp/sb-scaleout-DATE)
#
# Conditions (SB_SO_ONLY, space-separated; runs interleave them: run 1 of every
# condition, then run 2, ...):
#   n1-1k    one node (embedded store), 1,000 connected peers
#   n1-19k   one node (embedded store), 19,000 connected peers
#   n2-1k    two nodes through one Redis, 1,000 peers
#   n3-1k    three nodes through one Redis, 1,000 peers
#   n2-38k   two nodes through one Redis, 38,000 peers (19,000 per node)
#   n3-57k   three nodes through one Redis, 57,000 peers (19,000 per node)
#   n2-1k-lo two nodes, 1,000 peers, at 2/3 of SB_SO_RATE: the rate per node of n3-1k
#   n3-1k-hi three nodes, 1,000 peers, at 3/2 of SB_SO_RATE: the rate per node of n2-1k
# (default: all but n2-38k, n2-1k-lo and n3-1k-hi). The last two tell a cost
# that grows with the number of nodes from one that grows as each node's share
# of a fixed total rate shrinks (fewer signals per publish and per wake-up).
# Of the peers, 2 x SB_SO_PAIRS relay signals at SB_SO_RATE in total (with
# several nodes, A of pair i on node i and B on node i + 1, so every signal
# crosses nodes); the others are idle (hello + one join,
# rooms of 10), held by one `loadgen idle` process per node (at most ~19,000
# sockets a process: the open-files limit is 20,000) from source range
# 127.0.(20+k).1-40.
#
# Each measurement starts fresh processes, connects the idle peers, then runs
# `loadgen relay --baseline-secs` which first measures the processes' CPU with
# everything connected and silent (heartbeats of the idle peers, timers), then
# relays for SB_SO_SECS. The CPU time of every node (utime + stime from
# /proc/PID/stat) over the relay window divided by the signals delivered in it
# is "µs/signal"; "net" subtracts the idle rate of the baseline. Redis's CPU is
# reported apart (`redis µs/signal`).
#
# Environment:
#   SWITCHBOARD, LOADGEN, REDIS_SERVER   binaries (see lib.sh)
#   SB_SO_RATE      signals/s in total (default 10000)
#   SB_SO_PAIRS     relay pairs (default 200)
#   SB_SO_SECS      relay window (default 15)
#   SB_SO_BASELINE  idle baseline window (default 15)
# Keep both windows whole multiples of the node's heartbeat interval
# (limits.heartbeat_interval_ms, 15 s): each connection is pinged once per
# interval counted from its own connect, and the idle peers connect within a
# few seconds, so the pings come in bursts; a window of one whole interval holds
# exactly one ping per connection wherever it starts.
#   SB_SO_PORT      Redis on this port, nodes on the next ones (default 18380)
#   SB_SO_PERF=1    also count, with `perf stat` on the nodes during the relay
#                   window (from 3 s after the baseline to 2 s before the end),
#                   context switches, CPU migrations and the system calls that
#                   wait or wake (epoll_wait, futex) or move bytes (recvfrom,
#                   sendto, writev, write); the table gives them per signal
#   SB_SO_RATE=0    saturates (no fixed rate): the cost of a signal with no idle time
#   SB_SO_QUIET_WAIT  wait at most this long for a quiet machine per measurement (default 60)
#   SB_SO_FIRST_RUN number of the first run (default 1): to add runs to an OUTDIR
#
# Loopback only; every step is bounded in count and time.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-3}"
out="${2:-/tmp/sb-scaleout-$(date +%Y%m%d-%H%M%S)}"
only="${SB_SO_ONLY:-n1-1k n1-19k n2-1k n3-1k n3-57k}"
rate="${SB_SO_RATE:-10000}"
pairs="${SB_SO_PAIRS:-200}"
secs="${SB_SO_SECS:-15}"
baseline="${SB_SO_BASELINE:-15}"
base="${SB_SO_PORT:-18380}"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile

trap sb_stop_all EXIT
perf_events="context-switches,cpu-migrations"
for s in epoll_wait futex recvfrom sendto writev write; do
  perf_events="$perf_events,syscalls:sys_enter_$s"
done
if [ "${SB_SO_PERF:-0}" = 1 ] && ! perf stat -e "$perf_events" -- true >/dev/null 2>&1; then
  echo "scaleout: SB_SO_PERF=1 needs perf with syscall tracepoints (run as root); going on without" >&2
  SB_SO_PERF=0
fi

# measure NAME RUN NODES REDIS PEERS [RATE]
measure() {
  local name="$1" run="$2" n="$3" redis="$4" peers="$5" rate="${6:-$rate}" k idle per
  sb_wait_quiet 15 "${SB_SO_QUIET_WAIT:-60}"
  if ! sb_start_nodes "$name-$run" "$n" "$base" "$redis" 0 "$out"; then
    echo "scaleout: run $run $name skipped: the nodes did not start" >&2
    return 0
  fi
  idle=$((peers - 2 * pairs))
  per=$(((idle + n - 1) / n))
  echo "scaleout: run $run $name: $n node(s), $peers peers ($idle idle, $((2 * pairs)) relaying), $rate signals/s" >&2
  if [ "$per" -gt 0 ]; then
    sb_start_idle_gens "$out/$name-$run-idle" 20 "$per" --room-size 10 --hold-secs 900 --settle-ms 0
    sb_wait_idle_gens "$out/$name-$run-idle" 300 ||
      echo "scaleout: idle peers not all connected; measuring anyway" >&2
  fi
  sleep 2
  local pids="$SB_PIDS" perf_pid=""
  [ "$redis" = 1 ] && pids="$pids,$SB_REDIS_PID"
  if [ "${SB_SO_PERF:-0}" = 1 ] && [ "$secs" -gt 5 ]; then
    (
      sleep $((baseline + 3))
      perf stat -x, -o "$out/$name-$run.perf" -p "$SB_PIDS" -e "$perf_events" -- sleep $((secs - 5)) &&
        echo "# window $((secs - 5)) s" >>"$out/$name-$run.perf"
    ) >/dev/null 2>&1 &
    perf_pid=$!
  fi
  "$LOADGEN" relay --urls "$SB_URLS" --pairs "$pairs" --rate "$rate" --secs "$secs" \
    --baseline-secs "$baseline" --server-pid "$pids" \
    >"$out/$name-$run.json" 2>"$out/$name-$run.log" || true
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  # Idle peers still connected at the end (their sockets are the node's files).
  for k in $(seq 1 "$n"); do
    echo "node $k sockets: $(find "/proc/${SB_NODE_PIDS[$((k - 1))]}/fd" -lname 'socket:*' 2>/dev/null | wc -l)" \
      >>"$out/$name-$run.log"
  done
  sb_stop_all
  sleep 2
}

sb_machine_info >>"$out/machine.txt"
echo "rate $rate/s, $pairs pairs, ${secs}s relay, ${baseline}s baseline" >>"$out/machine.txt"

first="${SB_SO_FIRST_RUN:-1}"
for run in $(seq "$first" $((first + runs - 1))); do
  for c in $only; do
    case "$c" in
      n1-1k) measure "$c" "$run" 1 0 1000 ;;
      n1-19k) measure "$c" "$run" 1 0 19000 ;;
      n2-1k) measure "$c" "$run" 2 1 1000 ;;
      n3-1k) measure "$c" "$run" 3 1 1000 ;;
      n2-38k) measure "$c" "$run" 2 1 38000 ;;
      n3-57k) measure "$c" "$run" 3 1 57000 ;;
      n2-1k-lo) measure "$c" "$run" 2 1 1000 $((rate * 2 / 3)) ;;
      n3-1k-hi) measure "$c" "$run" 3 1 1000 $((rate * 3 / 2)) ;;
      *) echo "scaleout: unknown condition $c" >&2; exit 2 ;;
    esac
  done
done

cat "$out/machine.txt"
python3 - "$out" "$only" <<'PY'
import glob, json, os, re, statistics, sys
out, only = sys.argv[1], sys.argv[2].split()
NODES = {"n1-1k": 1, "n1-19k": 1, "n2-1k": 2, "n3-1k": 3, "n2-38k": 2, "n3-57k": 3, "n2-1k-lo": 2, "n3-1k-hi": 3}

def split(window, n):
    """CPU seconds of the nodes and of Redis over a window."""
    if not window:
        return None, None
    by = window.get("server_cpu_secs_by_pid")
    if by and len(by) > n:  # nodes, then Redis
        return sum(by[:n]), by[n]
    return window.get("server_cpu_secs"), None

def per_signal_counts(path, rate):
    """perf stat counts over the relay window, per signal at the run's mean delivery rate."""
    p = path[:-len(".json")] + ".perf"
    if not rate or not os.path.exists(p):
        return None
    counts = {}
    for line in open(p):
        f = line.strip().split(",")
        if len(f) < 3 or not f[0].replace(".", "").isdigit():
            continue
        counts[f[2].replace("syscalls:sys_enter_", "")] = float(f[0])
    m = re.search(r"^# window ([0-9.]+) s", open(p).read(), re.M)
    secs = float(m.group(1)) if m else None
    if not secs:
        return None
    return {k: v / (rate * secs) for k, v in counts.items()}

def row(r, n, path):
    c = r.get("cpu_per_signal") or {}
    d = c.get("delivered")
    if not d:
        return None
    nodes, redis = split(r.get("cpu"), n)
    w = r["cpu"]["window_secs"]
    bn, br = split(r.get("baseline_cpu"), n)
    bw = (r.get("baseline_cpu") or {}).get("window_secs")
    us = lambda s: s * 1e6 / d
    res = {"us": us(nodes), "redis_us": us(redis) if redis is not None else None,
           "perf": per_signal_counts(path, r.get("delivered_per_sec")),
           "net_us": us(nodes - bn / bw * w) if bn is not None and bw else None,
           "idle_pct": bn / bw * 100 if bn is not None and bw else None,
           "delivered_per_sec": r.get("delivered_per_sec"), "p50": r["latency"].get("p50_us"),
           "p99": r["latency"].get("p99_us"), "lost": r.get("lost"), "others": r["cpu"].get("others_cpu_pct")}
    return res

med = {}
perf_rows = []
print("| condition | nodes µs/signal | net of idle | idle CPU % | Redis µs/signal | delivered/s | p50 µs | p99 µs | lost | others CPU % | runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name in only:
    rows = []
    for p in sorted(glob.glob(os.path.join(out, f"{name}-[0-9]*.json"))):
        try:
            x = row(json.load(open(p)), NODES[name], p)
        except (OSError, ValueError, KeyError, TypeError):
            x = None
        if x:
            rows.append(x)
    if not rows:
        continue
    def m(k):
        v = [x[k] for x in rows if x[k] is not None]
        return statistics.median(v) if v else None
    def mr(k, f="{:.1f}"):
        v = [x[k] for x in rows if x[k] is not None]
        if not v:
            return "-"
        return f"{f.format(statistics.median(v))} ({f.format(min(v))}–{f.format(max(v))})"
    med[name] = {k: m(k) for k in rows[0] if k != "perf"}
    perf = [x["perf"] for x in rows if x["perf"]]
    if perf:
        perf_rows.append((name, len(perf), {k: statistics.median(c[k] for c in perf if k in c) for k in perf[0]}))
    print(f"| {name} | {mr('us')} | {mr('net_us')} | {mr('idle_pct')} | {mr('redis_us')} | {mr('delivered_per_sec', '{:,.0f}')} | "
          f"{mr('p50', '{:,.0f}')} | {mr('p99', '{:,.0f}')} | {sum(x['lost'] or 0 for x in rows)} | {mr('others')} | {len(rows)} |")
if perf_rows:
    keys = list(perf_rows[0][2])
    print()
    print("| condition (nodes, per signal, perf stat) | " + " | ".join(keys) + " | runs |")
    print("|---|" + "---|" * (len(keys) + 1))
    for name, k, c in perf_rows:
        print(f"| {name} | " + " | ".join(f"{c.get(key, float('nan')):.2f}" for key in keys) + f" | {k} |")
print()
print("| ratio (medians of nodes µs/signal) | gross | net of idle | within 15 % (gross / net) |")
print("|---|---|---|---|")
for a, b in [("n1-19k", "n1-1k"), ("n3-1k", "n2-1k"), ("n2-38k", "n2-1k"), ("n3-57k", "n3-1k"), ("n3-57k", "n2-1k"),
             ("n3-1k-hi", "n2-1k"), ("n3-1k", "n2-1k-lo"), ("n2-1k-lo", "n2-1k")]:
    if a in med and b in med:
        g = med[a]["us"] / med[b]["us"]
        n = med[a]["net_us"] / med[b]["net_us"] if med[a]["net_us"] and med[b]["net_us"] else None
        ok = lambda v: "-" if v is None else ("yes" if abs(v - 1) <= 0.15 else "no")
        print(f"| {a} / {b} | {g:.2f} | {'-' if n is None else f'{n:.2f}'} | {ok(g)} / {ok(n)} |")
PY
echo "scaleout: results in $out" >&2
