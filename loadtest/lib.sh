# Shared set-up of the benchmark scripts (bench.sh, cluster-bench.sh,
# cluster-idle.sh, scaleout.sh). Source it; it only defines functions and the
# variables named SB_* below.
#
#   sb_build                     SWITCHBOARD and LOADGEN: prebuilt when set, else
#                                `cargo build --release -p switchboard -p switchboard-loadgen`
#                                (the node and the workspace member loadgen/; both land
#                                in target/release/, honouring CARGO_TARGET_DIR)
#   sb_raise_nofile              raise the soft open-files limit to the hard one
#   sb_start_nodes NAME N BASE REDIS STUN OUTDIR
#                                start N fresh release nodes on 127.0.0.1:BASE+1..BASE+N
#                                (node ids bench-1..N, log level warn, logs in OUTDIR);
#                                REDIS=1: first a fresh redis-server on BASE and the nodes
#                                join it under a key prefix unique to this start;
#                                STUN=1: a STUN responder on 127.0.0.1:BASE+10+i, else off.
#                                Sets SB_URLS, SB_PIDS (comma-separated), SB_NODE_PIDS,
#                                SB_PORTS (arrays), SB_PREFIX; on failure (Redis or a node
#                                does not come up: e.g. a port taken by someone else) stops
#                                what it started and returns 1
#   sb_start_idle_gens PREFIX SRC CONNS [LOADGEN IDLE ARGS...]
#                                one `loadgen idle` per node of the last sb_start_nodes:
#                                generator k (1..N) holds CONNS sockets on node k from
#                                source addresses 127.0.(SRC+k-1).1-40, output in
#                                PREFIX-k.json and PREFIX-k.log; an argument `{pid}`
#                                stands for node k's pid; pids in SB_GEN_PIDS
#   sb_wait_idle_gens PREFIX MAXWAIT
#                                wait (at most MAXWAIT s) until every generator holds its
#                                sockets or has exited; returns 1 unless all hold
#   sb_wait_gens, sb_stop_gens   wait for the generators to exit / stop them (SIGTERM)
#   sb_stop_all                  stop the generators, then the nodes and Redis started
#                                by sb_start_nodes
#   sb_reap PID [TENTHS]         wait (at most TENTHS x 0.1 s, default 100) for PID to
#                                exit after a SIGTERM, then SIGKILL it and reap it
#   sb_wait_quiet LIMIT MAXWAIT  wait (at most MAXWAIT s) until the machine uses less than
#                                LIMIT % of one core over 2 s
#   sb_rss_kib PID, sb_cpu_ticks PID   VmRSS (KiB), utime+stime (ticks of 1/100 s)
#   sb_schedstat PID             over all threads of PID: ns on a CPU, ns runnable but
#                                waiting for a CPU (run queue), timeslices
#   sb_machine_info              date, commit, nproc, memory, kernel, CPU, limits
#
# Environment: SWITCHBOARD, LOADGEN, REDIS_SERVER (default redis-server on PATH);
# SB_NODE_WORKERS: when set, each node runs this many tokio worker threads
# (TOKIO_WORKER_THREADS for the nodes only; default: one per CPU).
# SB_NODE_CPUS: when set, the nodes run on these CPUs only (a `taskset -c`
# list, e.g. 0); run the script itself under `taskset -c 1` to put Redis and
# the generators on the other CPU.
# Loopback only; every wait is bounded.

sb_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SB_REDIS_BIN="${REDIS_SERVER:-redis-server}"
SB_NODE_PIDS=()
SB_PORTS=()
SB_URLS=""
SB_PIDS=""
SB_PREFIX=""
SB_REDIS_PID=""
SB_REDIS_PORT=""
SB_GEN_PIDS=()

sb_build() {
  if [ -z "${SWITCHBOARD:-}" ] || [ -z "${LOADGEN:-}" ]; then
    (cd "$sb_root" && cargo build --release --quiet -p switchboard -p switchboard-loadgen)
    local bin="${CARGO_TARGET_DIR:-$sb_root/target}/release"
    SWITCHBOARD="${SWITCHBOARD:-$bin/switchboard}"
    LOADGEN="${LOADGEN:-$bin/loadgen}"
  fi
  export SWITCHBOARD LOADGEN
}

# One process may hold at most `ulimit -Hn` files; nodes and generators
# inherit the soft limit, so raise it to the hard one.
sb_raise_nofile() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# sb_start_redis PORT LOG: three attempts, 2 s apart (the port may be briefly taken).
sb_start_redis() {
  local port="$1" log="$2" attempt
  SB_REDIS_PORT="$port"
  for attempt in 1 2 3; do
    "$SB_REDIS_BIN" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --maxclients 10000 >"$log" 2>&1 &
    SB_REDIS_PID=$!
    for _ in $(seq 1 50); do
      kill -0 "$SB_REDIS_PID" 2>/dev/null || break
      redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    kill -TERM "$SB_REDIS_PID" 2>/dev/null || true
    sb_reap "$SB_REDIS_PID"
    SB_REDIS_PID=""
    echo "lib: redis-server did not start on $port (attempt $attempt, see $log)" >&2
    sleep 2
  done
  return 1
}

# sb_start_nodes NAME N BASE REDIS(0|1) STUN(0|1) OUTDIR
sb_start_nodes() {
  local name="$1" n="$2" base="$3" redis="$4" stun="$5" out="$6" i port pid
  SB_URLS=""
  SB_PIDS=""
  SB_PORTS=()
  SB_PREFIX=""
  if [ "$redis" = 1 ]; then
    sb_start_redis "$base" "$out/redis-$name.log" || return 1
    SB_PREFIX="sb-$name-$$-$RANDOM"
  fi
  for i in $(seq 1 "$n"); do
    port=$((base + i))
    (
      cd "$sb_root"
      export SWITCHBOARD_SERVER__LISTEN="127.0.0.1:$port" SWITCHBOARD_LOG__LEVEL=warn \
        SWITCHBOARD_SERVER__NODE_ID="bench-$i" SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS=200
      if [ -n "${SB_NODE_WORKERS:-}" ]; then
        export TOKIO_WORKER_THREADS="$SB_NODE_WORKERS"
      fi
      if [ "$redis" = 1 ]; then
        export SWITCHBOARD_CLUSTER__REDIS_URL="redis://127.0.0.1:$base" \
          SWITCHBOARD_CLUSTER__KEY_PREFIX="$SB_PREFIX"
      fi
      if [ "$stun" = 1 ]; then
        # One load generator address: no per-source limit (stun.rate_per_ip).
        export SWITCHBOARD_STUN__ENABLED=true SWITCHBOARD_STUN__LISTEN="127.0.0.1:$((base + 10 + i))" \
          SWITCHBOARD_STUN__LISTEN_V6="" SWITCHBOARD_STUN__RATE_PER_IP=0
      else
        export SWITCHBOARD_STUN__ENABLED=false
      fi
      if [ -n "${SB_NODE_CPUS:-}" ]; then
        exec taskset -c "$SB_NODE_CPUS" "$SWITCHBOARD"
      fi
      exec "$SWITCHBOARD"
    ) >"$out/node-$name-$i.log" 2>&1 &
    pid=$!
    SB_NODE_PIDS+=("$pid")
    SB_PORTS+=("$port")
    SB_URLS="${SB_URLS:+$SB_URLS,}ws://127.0.0.1:$port/ws"
    SB_PIDS="${SB_PIDS:+$SB_PIDS,}$pid"
  done
  for port in "${SB_PORTS[@]}"; do
    local up=0
    for _ in $(seq 1 100); do
      if curl -fsS -m 1 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
        up=1
        break
      fi
      sleep 0.1
    done
    if [ "$up" != 1 ]; then
      echo "lib: node on $port is not ready after 10 s (see $out/node-$name-*.log)" >&2
      sb_stop_all
      return 1
    fi
  done
}

sb_start_idle_gens() {
  local prefix="$1" src="$2" conns="$3" k a
  shift 3
  local -a urls args
  IFS=, read -r -a urls <<<"$SB_URLS"
  for k in $(seq 0 $((${#urls[@]} - 1))); do
    args=()
    for a in "$@"; do
      if [ "$a" = "{pid}" ]; then args+=("${SB_NODE_PIDS[$k]}"); else args+=("$a"); fi
    done
    "$LOADGEN" idle --url "${urls[$k]}" --conns "$conns" \
      --source-ips "127.0.$((src + k)).1-127.0.$((src + k)).40" "${args[@]}" \
      >"$prefix-$((k + 1)).json" 2>"$prefix-$((k + 1)).log" &
    SB_GEN_PIDS+=($!)
  done
}

sb_wait_idle_gens() {
  local prefix="$1" deadline=$((SECONDS + $2)) n="${#SB_GEN_PIDS[@]}" k done holding
  while :; do
    done=0
    holding=0
    for k in $(seq 1 "$n"); do
      if grep -q '^idle: holding' "$prefix-$k.log" 2>/dev/null; then
        holding=$((holding + 1))
        done=$((done + 1))
      elif ! kill -0 "${SB_GEN_PIDS[$((k - 1))]}" 2>/dev/null; then
        done=$((done + 1))
      fi
    done
    [ "$done" -eq "$n" ] && break
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.5
  done
  [ "$holding" -eq "$n" ]
}

sb_wait_gens() {
  local p
  for p in "${SB_GEN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  SB_GEN_PIDS=()
}

sb_stop_gens() {
  local p
  for p in "${SB_GEN_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sb_wait_gens
}

sb_reap() {
  local p="$1" n="${2:-100}"
  for _ in $(seq 1 "$n"); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

sb_stop_all() {
  local p
  sb_stop_gens
  for p in "${SB_NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${SB_NODE_PIDS[@]}"; do sb_reap "$p"; done
  SB_NODE_PIDS=()
  if [ -n "$SB_REDIS_PID" ]; then
    kill -TERM "$SB_REDIS_PID" 2>/dev/null || true
    sb_reap "$SB_REDIS_PID"
    SB_REDIS_PID=""
  fi
  return 0
}

# Busy ticks of the whole machine (all cores), from /proc/stat.
sb_busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# sb_wait_quiet LIMIT_PCT MAXWAIT_SECS
sb_wait_quiet() {
  local limit="${1:-15}" deadline=$((SECONDS + ${2:-60})) b0 b1 pct
  while [ "$SECONDS" -lt "$deadline" ]; do
    b0=$(sb_busy_ticks)
    sleep 2
    b1=$(sb_busy_ticks)
    # busy ticks per second at USER_HZ=100 is the percentage of one core
    pct=$(((b1 - b0) / 2))
    [ "$pct" -le "$limit" ] && return 0
    echo "lib: machine busy (${pct}% of a core), waiting" >&2
  done
  echo "lib: machine still busy; measuring anyway" >&2
}

sb_rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null; }
# utime + stime in ticks (fields 14 and 15; the command name may hold spaces).
sb_cpu_ticks() { sed -E 's/.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }

sb_schedstat() {
  { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } |
    awk '{r += $1; w += $2; n += $3} END {printf "%.0f %.0f %.0f\n", r, w, n}'
}

sb_machine_info() {
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$sb_root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  grep MemTotal /proc/meminfo
  echo "kernel: $(uname -sr)"
  grep -m1 'model name' /proc/cpuinfo || true
  echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
  if command -v "$SB_REDIS_BIN" >/dev/null 2>&1; then echo "redis: $("$SB_REDIS_BIN" --version)"; fi
  echo "node worker threads: ${SB_NODE_WORKERS:-one per CPU}"
  echo "node CPUs: ${SB_NODE_CPUS:-all}; this script's CPUs: $(taskset -pc $$ | sed 's/.*: //')"
}
