// soak.js: idle sockets held for a long (bounded) time.
//
// Each VU opens one socket, says hello, joins a room, and then mostly idles:
// it answers the server's WebSocket pings (k6 does that by itself), counts
// them, and sends an application `ping` every SB_PING_MS to measure the
// round trip. After SB_SOAK_SECS it leaves and closes. A socket the server
// closes early (heartbeat timeout, slow consumer, crash) fails the run.
//
// The default is short (60 s); set SB_SOAK_SECS for a real soak, e.g. 3600.
// Every socket is held at least twice the server's heartbeat interval (from
// `welcome.heartbeat_ms`) plus a ping interval, however short SB_SOAK_SECS
// is, and must have seen at least one server ping by then: the heartbeat
// check is sampled on every run (`soak_heartbeat_checked` must be > 0).
//
// The round-trip threshold (p95 < 100 ms) is a benchmark's: it applies
// outside the smoke profile only (SB_SMOKE=1 runs on debug builds in CI,
// where it would measure the machine, not the broker).
//
// Environment (besides SB_URL / SB_URLS / SB_SMOKE, see lib/switchboard.js):
//   SB_VUS         sockets (default 200; smoke 5)
//   SB_SOAK_SECS   how long each socket is held (default 60; smoke 5)
//   SB_PING_MS     application ping interval (default 5000; smoke 1000)
//   SB_ROOM_SIZE   members per room (default 10)
//   SB_RAMP_SECS   spread the connects over this long (default 10; smoke 1)

import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import { clearInterval, clearTimeout, setInterval, setTimeout } from 'k6/timers';
import { SMOKE, envInt, open, parse, pickUrl, runId, send } from './lib/switchboard.js';

const VUS = envInt('SB_VUS', SMOKE ? 5 : 200);
const SOAK_SECS = envInt('SB_SOAK_SECS', SMOKE ? 5 : 60);
const PING_MS = envInt('SB_PING_MS', SMOKE ? 1000 : 5000);
const ROOM_SIZE = Math.max(1, envInt('SB_ROOM_SIZE', 10));
const RAMP_SECS = envInt('SB_RAMP_SECS', SMOKE ? 1 : 10);
const STEP_TIMEOUT_MS = 10000;

const pingRtt = new Trend('soak_ping_rtt', true);
const serverPings = new Counter('soak_server_pings');
const soakDrops = new Counter('soak_drops');
const soakErrors = new Counter('soak_errors');
const soakOk = new Rate('soak_ok');
const heartbeatOk = new Rate('soak_heartbeat_ok');
const heartbeatChecked = new Counter('soak_heartbeat_checked');

export const options = {
  scenarios: {
    soak: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${SOAK_SECS + RAMP_SECS + 120}s`,
    },
  },
  thresholds: {
    soak_ok: ['rate>0.99'],
    soak_drops: ['count==0'],
    soak_errors: ['count==0'],
    ...(SMOKE ? {} : { soak_ping_rtt: ['p(95)<100'] }),
    soak_heartbeat_ok: ['rate>0.99'],
    soak_heartbeat_checked: ['count>0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { run: runId() };
}

export default function (data) {
  const vu = exec.vu.idInTest;
  // Spread the connects over the ramp.
  sleep((RAMP_SECS * (vu - 1)) / Math.max(1, VUS));
  const me = `k6soak-${data.run}-v${vu}`;
  const room = `k6soak-${data.run}-r${Math.floor((vu - 1) / ROOM_SIZE)}`;
  const ws = open(pickUrl(vu));
  let closing = false;
  let joinedAt = 0;
  let heartbeatMs = 0;
  let pings = 0;
  let pinger = null;
  let pingSeq = 0;
  const pending = {};

  const finish = (ok, code) => {
    if (closing) return;
    closing = true;
    clearTimeout(stepTimer);
    clearTimeout(endTimer);
    if (pinger !== null) clearInterval(pinger);
    soakOk.add(ok);
    if (!ok) soakErrors.add(1, { code });
    if (ok && heartbeatMs > 0 && Date.now() - joinedAt > 2 * heartbeatMs) {
      heartbeatOk.add(pings > 0);
      heartbeatChecked.add(1);
    }
    ws.close();
  };
  let stepTimer = setTimeout(() => finish(false, 'setup-timeout'), STEP_TIMEOUT_MS);
  let endTimer = null;

  ws.onopen = () => send(ws, { type: 'hello', peer_id: me });
  ws.onping = () => {
    pings += 1;
    serverPings.add(1);
  };
  ws.onmessage = (e) => {
    const m = parse(e);
    if (!m) {
      soakErrors.add(1, { code: 'undecodable' });
      return;
    }
    switch (m.type) {
      case 'welcome':
        heartbeatMs = m.heartbeat_ms || 0;
        check(m, { 'welcome announces a heartbeat': (w) => w.heartbeat_ms > 0 });
        send(ws, { type: 'join', room });
        break;
      case 'joined':
        clearTimeout(stepTimer);
        joinedAt = Date.now();
        pinger = setInterval(() => {
          const id = pingSeq++;
          pending[id] = Date.now();
          send(ws, { type: 'ping', id });
        }, PING_MS);
        // Long enough for the heartbeat check (two intervals and a ping).
        endTimer = setTimeout(() => {
          stepTimer = setTimeout(() => finish(false, 'leave-timeout'), STEP_TIMEOUT_MS);
          send(ws, { type: 'leave', room, id: 'leave' });
        }, Math.max(SOAK_SECS * 1000, 2 * heartbeatMs + PING_MS));
        break;
      case 'pong':
        if (pending[m.id] !== undefined) {
          pingRtt.add(Date.now() - pending[m.id]);
          delete pending[m.id];
        }
        break;
      case 'ack':
        if (m.id === 'leave') finish(true);
        break;
      case 'error':
        finish(false, m.code || 'unknown');
        break;
      default:
        break;
    }
  };
  ws.onerror = (e) => {
    if (!closing) {
      console.warn(`${me}: socket error: ${e.error}`);
      soakDrops.add(1);
      finish(false, 'socket');
    }
  };
  ws.onclose = () => {
    if (!closing) {
      soakDrops.add(1);
      finish(false, 'closed-by-server');
    }
  };
}
