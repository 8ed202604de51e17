#!/usr/bin/env bash
# The operator console at scale: three release nodes and a real Redis,
# WORKERS legacy workers (default 20,000) and PEERS native idle peers
# (default 30,000; 50,000 connections in all), then an admin on the first
# node: the snapshot's time and size, a worker search, the last page of
# workers, a page of another node's peers, a page of rooms; and the nodes'
# CPU over 10 s without a console and 10 s with one admin socket open.
# Figures in docs/BENCHMARKS.md ("Operator console").
#
#   loadtest/console-bench.sh            # WORKERS=20000 PEERS=30000
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
WORKERS="${WORKERS:-20000}"
PEERS="${PEERS:-30000}"
TOKEN=console-bench-token
sb_build
sb_raise_nofile
out="$(mktemp -d)"
trap 'touch "$out/sync/done" 2>/dev/null; sb_stop_all; kill "${bench_pid:-0}" "${holder_pid:-0}" 2>/dev/null || true' EXIT
[ -d "$sb_root/tests/browser/node_modules/ws" ] || (cd "$sb_root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
export SWITCHBOARD_HTTP__ADMIN_TOKEN="$TOKEN" SWITCHBOARD_RENDEZVOUS__AUTO_PAIR=false
base=$((20000 + (RANDOM % 100) * 100))
sb_start_nodes console 3 "$base" 1 0 "$out"
pids="$(IFS=,; echo "${SB_NODE_PIDS[*]}")"
addrs="$(IFS=,; printf '127.0.0.1:%s,' "${SB_PORTS[@]}")"
addrs="${addrs%,}"
echo "console-bench: $PEERS idle peers over 3 nodes" >&2
sb_start_idle_gens "$out/idle" 10 $((PEERS / 3)) --hold-secs 900 --room-size 50
sb_wait_idle_gens "$out/idle" 600 || { echo "console-bench: idle peers did not connect" >&2; exit 1; }
mkdir -p "$out/sync"
# Half the workers in a holder process, half in the measuring one: one
# process may hold only `ulimit -Hn` sockets.
half=$((WORKERS / 2))
HOLD_FROM="$half" HOLD_COUNT=$((WORKERS - half)) node "$here/console-bench.mjs" "$TOKEN" "$WORKERS" "$addrs" "$out/sync" \
  >"$out/holder.out" 2>"$out/holder.log" &
holder_pid=$!
for _ in $(seq 1 3000); do [ -e "$out/sync/held-$half" ] && break; kill -0 "$holder_pid" || break; sleep 0.2; done
[ -e "$out/sync/held-$half" ] || { cat "$out/holder.log" >&2; exit 1; }
OWN_COUNT="$half" node "$here/console-bench.mjs" "$TOKEN" "$WORKERS" "$addrs" "$out/sync" >"$out/bench.json" 2>"$out/bench.log" &
bench_pid=$!
for _ in $(seq 1 3000); do [ -e "$out/sync/workers-open" ] && break; kill -0 "$bench_pid" || break; sleep 0.2; done
[ -e "$out/sync/workers-open" ] || { cat "$out/bench.log" >&2; exit 1; }
cpu() { local t=0 p; for p in "${SB_NODE_PIDS[@]}"; do t=$((t + $(sb_cpu_ticks "$p"))); done; echo "$t"; }
hz="$(getconf CLK_TCK)"
sleep 3
c0="$(cpu)"; sleep 10; c1="$(cpu)"
touch "$out/sync/go"
for _ in $(seq 1 1500); do [ -e "$out/sync/holding" ] && break; kill -0 "$bench_pid" || break; sleep 0.2; done
[ -e "$out/sync/holding" ] || { cat "$out/bench.log" >&2; exit 1; }
c2="$(cpu)"; sleep 10; c3="$(cpu)"
touch "$out/sync/done"
wait "$bench_pid"
wait "$holder_pid" || true
rss=0; for p in "${SB_NODE_PIDS[@]}"; do rss=$((rss + $(sb_rss_kib "$p"))); done
python3 - "$out/bench.json" "$c0" "$c1" "$c2" "$c3" "$hz" "$rss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c0, c1, c2, c3, hz, rss = map(int, sys.argv[2:8])
r["nodes_cpu_pct_without_console"] = round((c1 - c0) / hz / 10 * 100, 1)
r["nodes_cpu_pct_with_console"] = round((c3 - c2) / hz / 10 * 100, 1)
r["nodes_rss_mib"] = round(rss / 1024)
print(json.dumps(r, indent=1))
PY
