#!/usr/bin/env bash
# Runs the JS client's unit tests (clients/js/test/, under Node) and the
# tests in tests/browser/*.test.mjs (the /demo page and the JS client in
# real headless Chromium, and the client under Node, against real node
# processes and a real redis-server). Installs what is missing first:
# Debian's chromium and redis-server, the pinned playwright-core and ws
# (npm ci), and the debug binary
# (cargo build, a no-op when it is current; set SWITCHBOARD_BIN to use
# another binary).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

missing=()
command -v node >/dev/null || missing+=(nodejs npm)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}"
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -d "$here/node_modules/playwright-core" ] || [ ! -d "$here/node_modules/ws" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -z "${SWITCHBOARD_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --bin switchboard)
fi

cd "$repo"
echo "== clients/js unit tests"
node --test clients/js/test/
echo "== tests/browser (Chromium and Node, against real nodes)"
cd "$here"
# The tests run in a network namespace of their own: loopback for the
# nodes and Redis, and a veth pair with a default route, because Chromium
# gathers WebRTC host candidates only on an interface with a route (not on
# loopback). So the demo's media and data stay inside this namespace and
# never touch the machine's own interfaces. (Root: `unshare --net`;
# otherwise a user namespace maps the caller to root in it.)
setup='ip link set lo up && ip link add sb0 type veth peer name sb1 &&
  ip addr add 10.213.0.1/24 dev sb0 && ip link set sb0 up && ip link set sb1 up &&
  ip route add default via 10.213.0.2 dev sb0'
if [ "$(id -u)" = 0 ]; then ns=(unshare --net); else ns=(unshare --user --map-root-user --net); fi
"${ns[@]}" -- bash -c "$setup && exec node --test --test-concurrency=1 ./*.test.mjs"
