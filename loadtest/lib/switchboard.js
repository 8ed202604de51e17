// Shared helpers for the Switchboard k6 scripts (native protocol, JSON frames).
//
// Environment:
//   SB_URL   target WebSocket URL (default ws://127.0.0.1:8080/ws)
//   SB_URLS  several URLs, comma-separated; connections are spread round robin
//   SB_SMOKE 1 for the CI smoke profile (a few VUs for a few seconds)
//
// k6 has no sub-millisecond clock in scripts (no performance.now()), so
// latencies measured here have 1 ms resolution; the Rust generator
// (`cargo run --release -p switchboard-loadgen`) measures in microseconds.

import { WebSocket } from 'k6/experimental/websockets';

export const SMOKE = ['1', 'true', 'yes'].includes(String(__ENV.SB_SMOKE || '').toLowerCase());

/** The target URLs, from SB_URLS or SB_URL. */
export function urls() {
  const list = String(__ENV.SB_URLS || __ENV.SB_URL || 'ws://127.0.0.1:8080/ws')
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u.length > 0);
  if (list.length === 0) {
    throw new Error('no target URL: set SB_URL or SB_URLS');
  }
  return list;
}

/** The n-th URL, round robin. */
export function pickUrl(n) {
  const list = urls();
  return list[((n % list.length) + list.length) % list.length];
}

/** An integer from the environment, or the default. */
export function envInt(name, def) {
  const v = __ENV[name];
  if (v === undefined || v === '') {
    return def;
  }
  const n = parseInt(v, 10);
  if (Number.isNaN(n)) {
    throw new Error(`${name} must be an integer, got ${v}`);
  }
  return n;
}

/** A short random id, so that runs (and concurrent k6 processes) never share peer ids. */
export function runId() {
  return __ENV.SB_RUN || Math.random().toString(36).slice(2, 8);
}

/** Opens a socket; JSON frames (subprotocol switchboard.v1.json). */
export function open(url) {
  return new WebSocket(url, 'switchboard.v1.json');
}

/** Sends one client message as a JSON text frame. */
export function send(ws, msg) {
  ws.send(JSON.stringify(msg));
}

/** Parses a server message; null when it is not JSON. */
export function parse(e) {
  try {
    return JSON.parse(e.data);
  } catch (_) {
    return null;
  }
}
