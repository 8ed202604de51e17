#!/usr/bin/env bash
# The operator console's browser test: real headless Chromium (Debian's
# package, driven by playwright-core), two Switchboard nodes from
# target/debug and a real redis-server. Installs what is missing, then runs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  apt-get install -y chromium
fi
command -v redis-server >/dev/null 2>&1 || apt-get install -y redis-server
(cd "$repo" && cargo build --bin switchboard)
cd "$here"
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/ws ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi
exec node console.test.mjs
