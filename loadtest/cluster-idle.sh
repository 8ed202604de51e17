#!/usr/bin/env bash
# Many idle connections on a cluster: N nodes (default 3) through one Redis,
# each holding C idle connections (default 19,000; 57,000 in all), every
# connection after `hello` and one `join` (rooms of 10). Reports per node the
# connections held and the RSS per connection, the failures, and the
# cluster-wide directory count (to show that every connection is registered).
#
# Usage: loadtest/cluster-idle.sh [RUNS] [OUTDIR]     (defaults: 1, /tmp/sb-cluster-idle-DATE)
#
# One process here may hold at most 20,000 open files (hard limit), so the
# connections come from one `loadgen idle` process per node (each at most
# ~19,000 sockets), node k's generator binding to its own source range
# 127.0.(10+k).1-40. The script raises its soft open-files limit to the hard
# limit (the nodes and generators inherit it) and refuses more connections per
# node than that limit (or the node's server.max_connections, default 50,000)
# allows.
#
# Environment:
#   SWITCHBOARD, LOADGEN, REDIS_SERVER   binaries (see lib.sh)
#   SB_CI_NODES        nodes (default 3)
#   SB_CI_CONNS        connections per node (default 19000)
#   SB_CI_ROOM_SIZE    peers per room (default 10)
#   SB_CI_HOLD         seconds each generator holds its sockets once connected (default 30)
#   SB_CI_PORT         Redis on this port, nodes on the next ones (default 18280)
#   SB_CI_QUIET_WAIT   wait at most this long for a quiet machine per run (default 60)
#
# Prints one JSON summary per run (also kept in OUTDIR/run-N.json) and a
# markdown table over the runs. Loopback only; every step is bounded.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-1}"
out="${2:-/tmp/sb-cluster-idle-$(date +%Y%m%d-%H%M%S)}"
nodes="${SB_CI_NODES:-3}"
conns="${SB_CI_CONNS:-19000}"
room_size="${SB_CI_ROOM_SIZE:-10}"
hold="${SB_CI_HOLD:-30}"
base="${SB_CI_PORT:-18280}"
mkdir -p "$out"

# shellcheck source=loadtest/lib.sh
. "$here/lib.sh"
sb_build
sb_raise_nofile

nofile="$(ulimit -n)"
if [ $((conns + 64)) -gt "$nofile" ]; then
  echo "cluster-idle: $conns connections per node need more than the open-files limit ($nofile)" >&2
  exit 2
fi
max_conns="$(sed -nE 's/^max_connections *= *([0-9]+).*/\1/p' "$sb_root/config/default.toml" | head -n 1)"
max_conns="${SWITCHBOARD_SERVER__MAX_CONNECTIONS:-${max_conns:-50000}}"
if [ "$conns" -gt "$max_conns" ]; then
  echo "cluster-idle: $conns connections per node exceed server.max_connections ($max_conns)" >&2
  exit 2
fi

trap sb_stop_all EXIT

sb_machine_info >>"$out/machine.txt"

for run in $(seq 1 "$runs"); do
  sb_wait_quiet 15 "${SB_CI_QUIET_WAIT:-60}"
  if ! sb_start_nodes "ci-$run" "$nodes" "$base" 1 0 "$out"; then
    echo "cluster-idle: run $run skipped: the cluster did not start" >&2
    continue
  fi
  sleep 2
  rss0=()
  for p in "${SB_NODE_PIDS[@]}"; do rss0+=("$(sb_rss_kib "$p")"); done
  echo "cluster-idle: run $run: $nodes nodes ($SB_URLS), $conns connections each" >&2

  t0=$SECONDS
  sb_start_idle_gens "$out/gen-$run" 10 "$conns" --room-size "$room_size" --server-pid "{pid}" \
    --hold-secs "$hold" --settle-ms 2000
  sb_wait_idle_gens "$out/gen-$run" 300 || echo "cluster-idle: not every generator holds its sockets" >&2
  setup_secs=$((SECONDS - t0))
  sleep 2 # let the last joins settle
  rss1=()
  conns_now=()
  limits=()
  for p in "${SB_NODE_PIDS[@]}"; do
    rss1+=("$(sb_rss_kib "$p")")
    # established TCP connections of the node (sockets other than listeners and Redis are clients)
    conns_now+=("$(find "/proc/$p/fd" -lname 'socket:*' 2>/dev/null | wc -l)")
    limits+=("$(awk '/^Max open files/{print $4}' "/proc/$p/limits")")
  done
  # Cluster-wide directory: rooms and their members as the API reports them,
  # and the peer records in Redis.
  api_members="$(curl -fsS -m 60 "http://127.0.0.1:${SB_PORTS[0]}/api/rooms" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["rooms"]; print(len(r), sum(x["members"] for x in r))' || echo "null null")"
  redis_peers="$(timeout 60 redis-cli -p "$base" --scan --pattern "$SB_PREFIX:peer:*" | wc -l || echo null)"
  redis_mem="$(redis-cli -p "$base" info memory | sed -nE 's/^used_memory:([0-9]+).*/\1/p' | tr -d '\r')"
  held_at=$((SECONDS - t0))

  sb_wait_gens
  sb_stop_all

  python3 - "$out" "$run" "$nodes" "$conns" "$setup_secs" "$held_at" "$hold" "$api_members" "$redis_peers" \
    "$redis_mem" "${rss0[*]}" "${rss1[*]}" "${conns_now[*]}" "${limits[*]}" "$SB_URLS" <<'PY' | tee "$out/run-$run.json"
import json, sys
out, run, nodes, conns, setup_secs, held_at, hold, api, redis_peers, redis_mem, rss0, rss1, socks, limits, urls = sys.argv[1:]
nodes, conns, run = int(nodes), int(conns), int(run)
rss0 = [int(x) for x in rss0.split()]
rss1 = [int(x) for x in rss1.split()]
socks = [int(x) for x in socks.split()]
limits = limits.split()
per_node = []
for k in range(nodes):
    try:
        g = json.load(open(f"{out}/gen-{run}-{k + 1}.json"))
    except (OSError, ValueError):
        g = {}
    connected = g.get("connected", 0)
    per_node.append({
        "url": urls.split(",")[k],
        "connected": connected,
        "held_to_end": g.get("held_to_end"),
        "failed": g.get("failed"),
        "failures": g.get("failures"),
        "connects_per_sec": g.get("connects_per_sec"),
        "node_sockets": socks[k],
        "node_open_files_limit": limits[k],
        "rss_before_kib": rss0[k],
        "rss_held_kib": rss1[k],
        "rss_per_conn_bytes": round((rss1[k] - rss0[k]) * 1024 / connected, 1) if connected else None,
        "rss_per_conn_bytes_loadgen": g.get("server_rss_per_conn_bytes"),
    })
api_rooms, api_members = (int(x) if x != "null" else None for x in api.split())
total = sum(n["connected"] for n in per_node)
s = {
    "run": run,
    "nodes": nodes,
    "conns_per_node": conns,
    "connected": total,
    "held_to_end": sum(n["held_to_end"] or 0 for n in per_node),
    "failed": sum(n["failed"] or 0 for n in per_node),
    "setup_secs": int(setup_secs),
    "read_at_secs": int(held_at),
    "hold_secs": int(hold),
    "directory": {"api_rooms": api_rooms, "api_room_members": api_members,
                  "redis_peer_keys": int(redis_peers) if redis_peers.strip().isdigit() else None},
    "redis_used_memory_bytes": int(redis_mem) if redis_mem.isdigit() else None,
    "rss_per_conn_bytes_mean": round(sum(n["rss_held_kib"] - n["rss_before_kib"] for n in per_node) * 1024 / total, 1) if total else None,
    "per_node": per_node,
}
s["ok"] = (s["failed"] == 0 and s["held_to_end"] == nodes * conns
           and api_members == nodes * conns and s["directory"]["redis_peer_keys"] == nodes * conns)
print(json.dumps(s, indent=1))
PY
  sleep 3
done

python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = []
for p in sorted(glob.glob(os.path.join(out, "run-*.json"))):
    try:
        runs.append(json.load(open(p)))
    except (OSError, ValueError):
        pass
if not runs:
    sys.exit(1)
med = lambda xs: statistics.median(xs) if xs else None
print()
print("| run | connected / held | failed | directory (API members / Redis peers) | RSS/conn per node (B) | mean RSS/conn (B) | setup (s) |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    d = r["directory"]
    per = " / ".join(f'{n["rss_per_conn_bytes"]:,.0f}' if n["rss_per_conn_bytes"] else "-" for n in r["per_node"])
    f = lambda v: "-" if v is None else f"{v:,.0f}"
    print(f'| {r["run"]} | {f(r["connected"])} / {f(r["held_to_end"])} | {r["failed"]} | '
          f'{f(d["api_room_members"])} / {f(d["redis_peer_keys"])} | {per} | {f(r["rss_per_conn_bytes_mean"])} | {r["setup_secs"]} |')
vals = [r["rss_per_conn_bytes_mean"] for r in runs if r["rss_per_conn_bytes_mean"]]
print(f"\nmedian RSS per connection over {len(vals)} run(s): {med(vals) or 0:,.0f} B; all ok: {all(r['ok'] for r in runs)}")
PY
echo "cluster-idle: results in $out" >&2
