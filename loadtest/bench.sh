#!/usr/bin/env bash
# Reproduces the figures of docs/BENCHMARKS.md: starts a fresh release node for
# every measurement, runs the loadgen scenario against it, keeps every JSON
# summary, and prints the median and the spread (min..max) over the runs.
#
# Usage: loadtest/bench.sh [RUNS] [OUTDIR]      (defaults: 3, /tmp/sb-bench-DATE)
#
# Environment:
#   SWITCHBOARD, LOADGEN   prebuilt binaries (default: cargo build --release
#                          -p switchboard -p switchboard-loadgen, honouring
#                          CARGO_TARGET_DIR; see sb_build in lib.sh)
#   SB_BENCH_PORT          port of the node under test (default 18080)
#   SB_BENCH_ONLY          space-separated subset of: idle relay-sat relay-20k relay-50k
#                          relay-50k-b4 connect connect-hold. relay-50k-b4: 50,000/s in
#                          bursts of 4 back-to-back signals per sender, like an answer
#                          and its trickled candidates. connect closes each connection
#                          before making the next (churn); connect-hold keeps 19,000
#                          open until all are made and closes them outside the measured
#                          window (a reconnect storm). relay-50k-b4 and connect-hold are
#                          not in the default set.
#   SB_BENCH_FIRST_RUN     number of the first run (default 1): to add runs to an OUTDIR
#   SB_BENCH_QUIET_PCT     before each measurement, wait (at most SB_BENCH_QUIET_WAIT s,
#                          default 600) until the machine uses less than this percentage
#                          of one core (default 15); runs during which other processes
#                          used more than SB_BENCH_NOISY_PCT (default 25) are left out
#                          of the statistics when at least 3 quiet runs remain
#
# For the relay scenarios the table also gives, from the node's
# switchboard_relay_latency_seconds histogram (read from /metrics after the
# run), the share of relayed signals that spent more than 250 µs and more than
# 1 ms between being read and being written by the node, and, from the node's
# /proc/PID/task/*/schedstat over the whole loadgen run, how long its threads
# were runnable but waiting for a CPU (% of one core, and the mean wait each
# time a thread was given a CPU): time the machine, not the node, adds. The
# connect scenarios report the second as well.
#
# Loopback only; every step is bounded in count and time.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-3}"
out="${2:-/tmp/sb-bench-$(date +%Y%m%d-%H%M%S)}"
port="${SB_BENCH_PORT:-18080}"
url="ws://127.0.0.1:$port/ws"
only="${SB_BENCH_ONLY:-idle relay-sat relay-20k relay-50k connect}"
src="127.0.0.2-127.0.0.40"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile

spid=""
start_node() {
  # One node on $port, embedded store, STUN off.
  sb_start_nodes "$1" 1 $((port - 1)) 0 0 "$out" || exit 1
  spid="$SB_PIDS"
}
stop_node() {
  sb_stop_all
  spid=""
}
trap stop_node EXIT

# The machine is shared: wait (bounded) until the rest of it is quiet, i.e.
# less than SB_BENCH_QUIET_PCT (default 15) percent of one core busy over 2 s.
wait_quiet() { sb_wait_quiet "${SB_BENCH_QUIET_PCT:-15}" "${SB_BENCH_QUIET_WAIT:-600}"; }

measure() {
  local name="$1" i="$2"
  shift 2
  wait_quiet
  start_node "$name-$i"
  sleep 1
  echo "bench: run $i $name" >&2
  local s0 t0
  s0=$(sb_schedstat "$spid")
  t0=$(date +%s.%N)
  # Exit status 3 (completed, with failures) is recorded, not fatal.
  "$LOADGEN" "$@" --url "$url" --server-pid "$spid" >"$out/$name-$i.json" 2>"$out/$name-$i.log" || true
  echo "$s0 $(sb_schedstat "$spid") $t0 $(date +%s.%N)" >"$out/$name-$i.sched"
  # The node's own read-to-write time of every relayed signal (a histogram):
  # how much of the latency the generator saw was spent inside the node.
  curl -fsS -m 5 "http://127.0.0.1:$port/metrics" 2>/dev/null |
    grep '^switchboard_relay_latency_seconds' >"$out/$name-$i.metrics" || true
  stop_node
  sleep 2 # let TIME_WAIT and the allocator settle between runs
}

sb_machine_info >>"$out/machine.txt"

first="${SB_BENCH_FIRST_RUN:-1}"
for i in $(seq "$first" $((first + runs - 1))); do
  for s in $only; do
    case "$s" in
      idle) measure idle "$i" idle --conns 10000 --room-size 10 --source-ips "$src" --hold-secs 5 ;;
      relay-sat) measure relay-sat "$i" relay --pairs 1000 --rate 0 --window 64 --secs 10 ;;
      relay-20k) measure relay-20k "$i" relay --pairs 1000 --rate 20000 --secs 10 ;;
      relay-50k) measure relay-50k "$i" relay --pairs 1000 --rate 50000 --secs 10 ;;
      relay-50k-b4) measure relay-50k-b4 "$i" relay --pairs 1000 --rate 50000 --burst 4 --secs 10 ;;
      connect) measure connect "$i" connect --conns 20000 --concurrency 64 --source-ips "$src" ;;
      connect-hold) measure connect-hold "$i" connect --conns 19000 --concurrency 64 --hold --source-ips "$src" ;;
      *) echo "bench: unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done

cat "$out/machine.txt"
python3 - "$out" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
fields = {
    "idle": [("server_rss_per_conn_bytes", "RSS/conn (B)"), ("connects_per_sec", "connects/s"), ("failed", "failed")],
    "relay-sat": [("delivered_per_sec", "delivered/s"), ("latency.p50_us", "p50 µs"), ("latency.p99_us", "p99 µs"), ("lost", "lost"), ("cpu.server_cpu_pct", "server CPU %")],
    "relay-20k": [("delivered_per_sec", "delivered/s"), ("latency.p50_us", "p50 µs"), ("latency.p99_us", "p99 µs"), ("latency.max_us", "max µs"), ("lost", "lost"), ("cpu.server_cpu_pct", "server CPU %")],
    "relay-50k": [("delivered_per_sec", "delivered/s"), ("latency.p50_us", "p50 µs"), ("latency.p99_us", "p99 µs"), ("latency.max_us", "max µs"), ("lost", "lost"), ("cpu.server_cpu_pct", "server CPU %"), ("cpu.loadgen_cpu_pct", "loadgen CPU %"), ("cpu.machine_cpu_pct", "machine CPU %")],
    "relay-50k-b4": [("delivered_per_sec", "delivered/s"), ("latency.p50_us", "p50 µs"), ("latency.p99_us", "p99 µs"), ("latency.max_us", "max µs"), ("lost", "lost"), ("cpu.server_cpu_pct", "server CPU %"), ("cpu.loadgen_cpu_pct", "loadgen CPU %"), ("cpu.machine_cpu_pct", "machine CPU %")],
    "connect": [("connects_per_sec", "connects/s"), ("hello_latency.p99_us", "p99 µs"), ("failed", "failed"), ("cpu.server_cpu_pct", "server CPU %"), ("cpu.loadgen_cpu_pct", "loadgen CPU %"), ("cpu.machine_cpu_pct", "machine CPU %")],
    "connect-hold": [("connects_per_sec", "connects/s"), ("hello_latency.p99_us", "p99 µs"), ("failed", "failed"), ("unclean_closes", "unclean closes"), ("cpu.server_cpu_pct", "server CPU %"), ("cpu.loadgen_cpu_pct", "loadgen CPU %"), ("cpu.machine_cpu_pct", "machine CPU %")],
}
def node_share(path):
    """From the node's read-to-write histogram: % of relayed signals over 250 µs and over 1 ms."""
    b, n = {}, None
    try:
        for line in open(path):
            if line.startswith("switchboard_relay_latency_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                b[le] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("switchboard_relay_latency_seconds_count"):
                n = float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    if not n or "0.00025" not in b or "0.001" not in b:
        return None
    return {"over_250us_pct": round(100 * (1 - b["0.00025"] / n), 4), "over_1ms_pct": round(100 * (1 - b["0.001"] / n), 4)}
def node_sched(path):
    """Run-queue wait of the node's threads over the loadgen run."""
    try:
        r0, w0, n0, r1, w1, n1, t0, t1 = map(float, open(path).read().split())
    except (OSError, ValueError):
        return None
    if t1 <= t0 or n1 <= n0:
        return None
    return {"runq_wait_pct": round((w1 - w0) / 1e7 / (t1 - t0), 1),
            "runq_wait_per_slice_us": round((w1 - w0) / (n1 - n0) / 1e3, 1)}
RELAY = {"relay-sat", "relay-20k", "relay-50k", "relay-50k-b4"}
SCHED_FIELDS = [("sched.runq_wait_pct", "node threads waiting for a CPU, % of a core"), ("sched.runq_wait_per_slice_us", "node's mean wait for a CPU, µs")]
NODE_FIELDS = [("node.over_250us_pct", "node read→write > 250 µs, % of signals"), ("node.over_1ms_pct", "node read→write > 1 ms, % of signals")] + SCHED_FIELDS
def get(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
# Runs during which the rest of the machine used more than this much CPU
# (percent of one core) are left out of the statistics when at least 3 quiet runs remain.
NOISY = float(os.environ.get("SB_BENCH_NOISY_PCT", "25"))
def others(r):
    return get(r, "cpu.others_cpu_pct") if get(r, "cpu") else get(r, "setup_cpu.others_cpu_pct")
print("| scenario | metric | median | min | max | quiet runs / runs |")
print("|---|---|---|---|---|---|")
for name, fs in fields.items():
    runs = []
    for p in sorted(glob.glob(os.path.join(out, f"{name}-[0-9]*.json"))):
        try:
            r = json.load(open(p))
        except (ValueError, OSError):
            continue
        r["node"] = node_share(p[:-len(".json")] + ".metrics")
        r["sched"] = node_sched(p[:-len(".json")] + ".sched")
        runs.append(r)
    if not runs:
        continue
    quiet = [r for r in runs if (others(r) or 0) <= NOISY]
    used = quiet if len(quiet) >= 3 else runs
    extra = NODE_FIELDS if name in RELAY else SCHED_FIELDS if name.startswith("connect") else []
    fs = fs + extra + [("others_cpu", "other processes' CPU %")]
    for path, label in fs:
        if path == "others_cpu":
            vals = [others(r) or 0 for r in used]
            fmt = lambda v: f"{v:g}"
            print(f"| {name} | {label} | {fmt(statistics.median(vals))} | {fmt(min(vals))} | {fmt(max(vals))} | {len(quiet)}/{len(runs)} |")
            continue
        vals = [v for v in (get(r, path) for r in used) if isinstance(v, (int, float))]
        if vals:
            fmt = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:g}"
            print(f"| {name} | {label} | {fmt(statistics.median(vals))} | {fmt(min(vals))} | {fmt(max(vals))} | {len(quiet)}/{len(runs)} |")
EOF
echo "bench: results in $out" >&2
