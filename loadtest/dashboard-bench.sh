#!/usr/bin/env bash
# The dashboard door's room list at scale: S subscribers (default 10,000) of
# `webrtc-dashboard-rooms` spread over 1, 2 and 3 nodes through one Redis
# (`loadgen dashboard`): the latency of a room change to every subscriber,
# and the nodes' CPU for the periodic list, above a baseline of the same
# sockets with no room (so no list).
#
# Usage: loadtest/dashboard-bench.sh [RUNS] [OUTDIR]   (defaults: 1, /tmp/sb-dashboard-DATE)
#
# Environment:
#   SWITCHBOARD, LOADGEN, REDIS_SERVER   binaries (see lib.sh)
#   SB_DB_SUBSCRIBERS   subscribers in all (default 10000)
#   SB_DB_NODES         node counts to run, space-separated (default "1 2 3")
#   SB_DB_PERIOD_MS     doors.dashboard.room_list_interval_ms (default 1000:
#                       5 times the default rate, so the list's cost stands out)
#   SB_DB_CHANGES       room changes per run (default 20)
#   SB_DB_HOLD          seconds of the baseline and of the periodic phase (default 15)
#   SB_DB_PORT          Redis on this port, nodes on the next ones (default 18380)
#   SB_DB_QUIET_WAIT    wait at most this long for a quiet machine per run (default 60)
#   SB_DB_PERF          1: `perf record -g` the nodes during the changes phase
#                       (OUTDIR/perf-RUN-nodes-N.data; read with `perf report -i`)
#
# The door is served under the prefix /dashboard on each node's main
# listener (loopback, so dashboards are admitted without a token). Prints
# one JSON summary per run (kept in OUTDIR) and a markdown table. Loopback
# only; every step is bounded.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-1}"
out="${2:-/tmp/sb-dashboard-$(date +%Y%m%d-%H%M%S)}"
subs="${SB_DB_SUBSCRIBERS:-10000}"
node_counts="${SB_DB_NODES:-1 2 3}"
period="${SB_DB_PERIOD_MS:-1000}"
changes="${SB_DB_CHANGES:-20}"
hold="${SB_DB_HOLD:-15}"
base="${SB_DB_PORT:-18380}"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile
trap sb_stop_all EXIT
sb_machine_info >>"$out/machine.txt"

export SWITCHBOARD_DOORS__DASHBOARD__PREFIX=/dashboard
export SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS="$period"

rows=()
for run in $(seq 1 "$runs"); do
  for n in $node_counts; do
    sb_wait_quiet 15 "${SB_DB_QUIET_WAIT:-60}"
    if ! sb_start_nodes "db-$run-$n" "$n" "$base" 1 0 "$out"; then
      echo "dashboard-bench: run $run ($n nodes) skipped: the cluster did not start" >&2
      continue
    fi
    urls="${SB_URLS//\/ws/\/dashboard\/ws\/}"
    echo "dashboard-bench: run $run: $n nodes ($urls), $subs subscribers" >&2
    json="$out/run-$run-nodes-$n.json"
    log="$out/run-$run-nodes-$n.log"
    "$LOADGEN" dashboard --urls "$urls" --subscribers "$subs" --changes "$changes" \
      --change-interval-ms 500 --hold-secs "$hold" --server-pid "$SB_PIDS" \
      --source-ips 127.0.30.1-127.0.30.40 --concurrency 200 >"$json" 2>"$log" &
    gen=$!
    if [ "${SB_DB_PERF:-0}" = 1 ]; then
      # The changes phase starts one baseline after the subscribers are in.
      for _ in $(seq 1 3000); do
        grep -q "subscribed in" "$log" 2>/dev/null && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.1
      done
      sleep "$hold"
      timeout -s INT $((changes / 2 + 3)) perf record -q -g -p "$SB_PIDS" \
        -o "$out/perf-$run-nodes-$n.data" >/dev/null 2>&1 || true
    fi
    wait "$gen" || echo "dashboard-bench: loadgen exited with $? (see $log)" >&2
    sb_stop_all
    rows+=("$(jq -r --arg n "$n" --arg run "$run" '[$run, $n, .subscribers,
      .change_latency_us.p50_us, .change_latency_us.p99_us, .change_latency_us.max_us,
      .change_last_us.p50_us, .change_last_us.max_us, .changes_cpu.loadgen_cpu_pct,
      .deliveries.missing, .periodic.lists_per_subscriber_per_sec, .periodic.list_frame_bytes,
      .baseline.cpu.server_cpu_pct, .periodic.cpu.server_cpu_pct,
      .periodic.server_cpu_us_per_list_above_baseline, .periodic.cpu.others_cpu_pct]
      | map(tostring) | "| " + join(" | ") + " |"' "$json" 2>/dev/null || echo "| $run | $n | (no summary) |")")
  done
done

echo
echo "| run | nodes | subscribers | change p50 µs | p99 µs | max µs | to the last, p50 µs | to the last, max µs | generator CPU % (changes) | missing | lists/subscriber/s | list bytes | baseline node CPU % | periodic node CPU % | node µs per list above baseline | others' CPU % |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
