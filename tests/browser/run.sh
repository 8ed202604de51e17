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
node --test --test-concurrency=1 ./*.test.mjs
