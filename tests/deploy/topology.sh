#!/usr/bin/env bash
# The docker-compose.yml topology without containers: a real redis-server,
# three nodes, nginx with the repo's config (config/nginx.conf, ports
# rewritten) and a real Prometheus with config/compose/prometheus.yml
# (targets rewritten to the nodes' loopback ports) and the alert rules.
# Traffic goes through nginx and across nodes (the load generator's relay and
# pairing scenarios, STUN requests, one refused message), then:
#   - every scrape target is up, and a query over switchboard_* returns data;
#   - `promtool check metrics` accepts what every node exports;
#   - every metric named by the Grafana dashboard or the alert rules is one a
#     node really exports;
#   - every dashboard query and rule expression is evaluated by Prometheus
#     without error, and the dashboard's queries return data.
# Run by tests/deploy/check.sh. Loopback only; every wait is bounded.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
log() { printf '== topology: %s\n' "$*" >&2; }
fail() { printf '== topology: FAILED: %s\n' "$*" >&2; exit 1; }

bin="${CARGO_TARGET_DIR:-$root/target}/debug"
cargo build -q -p switchboard -p switchboard-loadgen --bins
export SWITCHBOARD="$bin/switchboard" LOADGEN="$bin/loadgen"
. "$root/loadtest/lib.sh"
command -v nginx >/dev/null || fail "nginx is not installed (tests/run-all.sh installs it)"
command -v prometheus >/dev/null || fail "prometheus is not installed (tests/deploy/check.sh installs it)"

work="$(mktemp -d)"
nginx_pid=""
prom_pid=""
cleanup() {
  [ -n "$prom_pid" ] && { kill -TERM "$prom_pid" 2>/dev/null || true; sb_reap "$prom_pid"; }
  [ -n "$nginx_pid" ] && { kill -TERM "$nginx_pid" 2>/dev/null || true; sb_reap "$nginx_pid"; }
  sb_stop_all
  if [ "${TOPOLOGY_KEEP:-0}" = 1 ]; then log "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Ports: base (redis), base+1..3 (nodes), base+11..13 (STUN), base+20
# (nginx), base+21 (Prometheus).
base=$((20000 + (RANDOM % 400) * 100))
sb_start_nodes topo 3 "$base" 1 1 "$work" || fail "the nodes did not start"
ports=("${SB_PORTS[@]}")
lb=$((base + 20))
prom=$((base + 21))

# nginx: the repo's config with this run's ports and paths.
sed -e "s#listen 127.0.0.1:8080;#listen 127.0.0.1:$lb;#" \
    -e "s#server 127.0.0.1:8081 #server 127.0.0.1:${ports[0]} #" \
    -e "s#server 127.0.0.1:8082 #server 127.0.0.1:${ports[1]} #" \
    -e "s#server 127.0.0.1:8083 #server 127.0.0.1:${ports[2]} #" \
    -e "s#/tmp/switchboard-nginx#$work/nginx#g" config/nginx.conf >"$work/nginx.conf"
grep -q "127.0.0.1:$lb" "$work/nginx.conf" && [ "$(grep -c "127.0.0.1:${ports[0]}\|127.0.0.1:${ports[1]}\|127.0.0.1:${ports[2]}" "$work/nginx.conf")" = 3 ] \
  || fail "config/nginx.conf no longer has the listen/upstream lines this test rewrites"
nginx -p "$work" -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
nginx_pid=$!

# Prometheus: the compose config with loopback targets and a fast scrape.
targets="$(printf '"127.0.0.1:%s", ' "${ports[@]}")"
sed -e "s#\[\"node1:8080\", \"node2:8080\", \"node3:8080\"\]#[${targets%, }]#" \
    -e "s#/etc/prometheus/alerts.yml#$root/config/prometheus/alerts.yml#" \
    -e "s#scrape_interval: 5s#scrape_interval: 1s#" \
    -e "s#evaluation_interval: 15s#evaluation_interval: 1s#" \
    config/compose/prometheus.yml >"$work/prometheus.yml"
grep -q "127.0.0.1:${ports[2]}" "$work/prometheus.yml" || fail "config/compose/prometheus.yml no longer has the targets line this test rewrites"
promtool check config "$work/prometheus.yml" >&2 || fail "promtool check config"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 &
prom_pid=$!

for _ in $(seq 1 100); do
  curl -fsS -m 1 "http://127.0.0.1:$lb/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS -m 2 "http://127.0.0.1:$lb/readyz" >/dev/null || fail "nginx does not reach the nodes (see $work/nginx.log)"

# --- traffic --------------------------------------------------------------
urls="ws://127.0.0.1:${ports[0]}/ws,ws://127.0.0.1:${ports[1]}/ws,ws://127.0.0.1:${ports[2]}/ws"
log "traffic: relay across nodes, through nginx and on one node, pairing, STUN, a refused message"
timeout 60 "$LOADGEN" relay --urls "$urls" --pairs 20 --rate 400 --secs 3 >"$work/relay.json" || fail "relay across nodes"
timeout 60 "$LOADGEN" relay --url "ws://127.0.0.1:$lb/ws" --pairs 10 --rate 200 --secs 2 >"$work/relay-lb.json" || fail "relay through nginx"
# Pairs on one node: switchboard_relay_latency_seconds times relays inside a node.
timeout 60 "$LOADGEN" relay --url "ws://127.0.0.1:${ports[0]}/ws" --pairs 10 --rate 200 --secs 2 >"$work/relay-one.json" || fail "relay on one node"
timeout 60 "$LOADGEN" pairing --urls "$urls" --workers 20 >"$work/pairing.json" || fail "pairing"
timeout 60 "$LOADGEN" stun --target "127.0.0.1:$((base + 11))" --secs 1 >"$work/stun.json" || fail "stun"
# A truncated STUN Binding request (its header announces 4 bytes of
# attributes that never come): counted in switchboard_stun_malformed_total.
python3 -c 'import socket, sys, struct, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(struct.pack("!HHI", 1, 4, 0x2112A442) + os.urandom(12), ("127.0.0.1", int(sys.argv[1])))' "$((base + 11))"
# One message before hello: answered `error` (code hello-required).
python3 - "$lb" <<'PY' || fail "the refused message was not answered"
import base64, json, os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(4096)
assert head.startswith(b"HTTP/1.1 101"), head
rest = head.split(b"\r\n\r\n", 1)[1]
payload = json.dumps({"type": "join", "room": "x"}).encode()
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
buf = rest
while len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F):
    buf += s.recv(4096)
frame = json.loads(buf[2:2 + (buf[1] & 0x7F)])
assert frame["type"] == "error" and frame["code"] == "hello-required", frame
PY

# --- Prometheus -----------------------------------------------------------
q() { curl -fsS -m 5 "http://127.0.0.1:$prom/api/v1/$1" "${@:2}"; }
# Every target up, and two scrapes after the traffic (rates need two samples).
up=0
for _ in $(seq 1 150); do
  n="$(q query --data-urlencode 'query=count(up{job="switchboard"} == 1)' 2>/dev/null \
      | python3 -c 'import sys, json; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)"
  if [ "$n" = 3 ]; then up=1; break; fi
  sleep 0.2
done
[ "$up" = 1 ] || fail "Prometheus does not see 3 targets up (see $work/prometheus.log)"
sleep 3 # three more scrapes at 1 s: what the rates below read (a bounded wait for samples, not for an event)

for p in "${ports[@]}"; do
  curl -fsS -m 5 "http://127.0.0.1:$p/metrics" >"$work/metrics-$p.txt"
  promtool check metrics <"$work/metrics-$p.txt" >"$work/lint-$p.txt" 2>&1 || { cat "$work/lint-$p.txt" >&2; fail "promtool check metrics (node on $p)"; }
done
log "promtool check metrics: clean on 3 nodes"

python3 - "$prom" "$work" <<'PY' || fail "dashboard and rule expressions"
import glob, json, re, sys, urllib.parse, urllib.request
prom, work = sys.argv[1], sys.argv[2]
def query(expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
exported = set()
for f in glob.glob(f"{work}/metrics-*.txt"):
    for line in open(f):
        m = re.match(r"(switchboard_[a-z0-9_]+)", line)
        if m:
            exported.add(re.sub(r"_(bucket|sum|count)$", "", m.group(1)))
r = query("sum(switchboard_connections_total)")
assert r["status"] == "success" and r["data"]["result"], f"no switchboard_* data in Prometheus: {r}"
import yaml
rules = [(x["alert"], x["expr"]) for g in yaml.safe_load(open("config/prometheus/alerts.yml"))["groups"] for x in g["rules"]]
dash = json.load(open("config/grafana/dashboards/switchboard.json"))
queries = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
problems = []
for where, expr in rules + queries:
    for name in re.findall(r"switchboard_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base not in exported:
            problems.append(f"{where}: {name} is not exported by any node")
# Grafana's $__rate_interval is at least four scrape intervals: 1s scrapes here.
empty = []
for where, expr in rules + queries:
    r = query(expr.replace("$__rate_interval", "4s"))
    if r.get("status") != "success":
        problems.append(f"{where}: Prometheus refuses {expr!r}: {r.get('error')}")
    elif (where, expr) in queries and not r["data"]["result"]:
        empty.append(f"{where}: {expr}")
# Series that exist only after an event this traffic does not cause (a lost
# pairing): allowed to be empty, by name.
allowed_empty = ("switchboard_pairings_lost_total",)
for e in empty:
    if not any(a in e for a in allowed_empty):
        problems.append(f"no data for dashboard query {e}")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"topology: {len(rules)} rules and {len(queries)} dashboard queries evaluate; "
      f"{len(queries) - len(empty)} dashboard queries return data; every named metric is exported")
PY
log "passed"
