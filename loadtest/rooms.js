// rooms.js: room fan-out under presence churn.
//
// Every iteration is one visit: connect, hello, join one of SB_ROOMS rooms,
// broadcast every SB_BROADCAST_MS for a random stay, leave (acknowledged), and
// close. Visits overlap, so members keep joining and leaving while the others
// broadcast: every member should see each broadcast of the others (one-way
// latency from the timestamp in `data`), the `peer-joined`/`peer-left` events,
// and never its own broadcasts.
//
// Environment (besides SB_URL / SB_URLS / SB_SMOKE, see lib/switchboard.js):
//   SB_VUS           concurrent members (default 100; smoke 6)
//   SB_ROOM_SIZE     members per room on average (default 10; smoke 3)
//   SB_DURATION      test length (default 60s; smoke 5s)
//   SB_BROADCAST_MS  interval between one member's broadcasts (default 500; smoke 200)
//   SB_STAY_MIN_MS / SB_STAY_MAX_MS  length of a visit (default 3000..10000; smoke 1000..2000)
//   SB_P95_MS        fan-out latency p95 target (default 50); a benchmark's
//                    threshold, not applied in the smoke profile

import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import { clearInterval, clearTimeout, setInterval, setTimeout } from 'k6/timers';
import { SMOKE, envInt, open, parse, pickUrl, runId, send } from './lib/switchboard.js';

const VUS = envInt('SB_VUS', SMOKE ? 6 : 100);
const ROOM_SIZE = Math.max(1, envInt('SB_ROOM_SIZE', SMOKE ? 3 : 10));
const ROOMS = Math.max(1, Math.ceil(VUS / ROOM_SIZE));
const DURATION = __ENV.SB_DURATION || (SMOKE ? '5s' : '60s');
const BROADCAST_MS = envInt('SB_BROADCAST_MS', SMOKE ? 200 : 500);
const STAY_MIN_MS = envInt('SB_STAY_MIN_MS', SMOKE ? 1000 : 3000);
const STAY_MAX_MS = Math.max(STAY_MIN_MS, envInt('SB_STAY_MAX_MS', SMOKE ? 2000 : 10000));
const P95_MS = envInt('SB_P95_MS', 50);
const STEP_TIMEOUT_MS = 10000;
const PAYLOAD = 'm'.repeat(envInt('SB_PAYLOAD_BYTES', 200));

const fanoutLatency = new Trend('broadcast_latency', true);
const broadcastsSent = new Counter('broadcasts_sent');
const broadcastsReceived = new Counter('broadcasts_received');
const presenceEvents = new Counter('presence_events');
const selfEchoes = new Counter('self_echoes');
const roomErrors = new Counter('room_errors');
const joinsOk = new Rate('joins_ok');
const leavesOk = new Rate('leaves_ok');

export const options = {
  scenarios: {
    churn: {
      executor: 'constant-vus',
      vus: VUS,
      duration: DURATION,
      gracefulStop: `${Math.ceil((STAY_MAX_MS + STEP_TIMEOUT_MS) / 1000) + 5}s`,
    },
  },
  thresholds: {
    ...(SMOKE ? {} : { broadcast_latency: [`p(95)<${P95_MS}`] }),
    broadcasts_received: ['count>0'],
    presence_events: ['count>0'],
    self_echoes: ['count==0'],
    room_errors: ['count==0'],
    joins_ok: ['rate>0.99'],
    leaves_ok: ['rate>0.99'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { run: runId() };
}

export default function (data) {
  const vu = exec.vu.idInTest;
  const iter = exec.vu.iterationInScenario;
  const me = `k6room-${data.run}-v${vu}-i${iter}`;
  const room = `k6room-${data.run}-r${Math.floor(Math.random() * ROOMS)}`;
  const stay = STAY_MIN_MS + Math.floor(Math.random() * (STAY_MAX_MS - STAY_MIN_MS + 1));
  const ws = open(pickUrl(vu + iter));

  let closing = false;
  let ticker = null;
  let stepTimer = null;
  let seq = 0;

  const step = (what) => {
    clearTimeout(stepTimer);
    stepTimer = setTimeout(() => {
      if (closing) return;
      roomErrors.add(1, { code: `${what}-timeout` });
      if (what === 'join') joinsOk.add(false);
      if (what === 'leave') leavesOk.add(false);
      done();
    }, STEP_TIMEOUT_MS);
  };
  const done = () => {
    if (closing) return;
    closing = true;
    clearTimeout(stepTimer);
    if (ticker !== null) clearInterval(ticker);
    ws.close();
  };
  const leave = () => {
    if (closing) return;
    if (ticker !== null) clearInterval(ticker);
    ticker = null;
    step('leave');
    send(ws, { type: 'leave', room, id: 'leave' });
  };

  ws.onopen = () => {
    step('hello');
    send(ws, { type: 'hello', peer_id: me, meta: { vu } });
  };
  ws.onmessage = (e) => {
    const m = parse(e);
    if (!m) {
      roomErrors.add(1, { code: 'undecodable' });
      return;
    }
    switch (m.type) {
      case 'welcome':
        step('join');
        send(ws, { type: 'join', room, id: 'join' });
        break;
      case 'joined':
        clearTimeout(stepTimer);
        joinsOk.add(true);
        check(m, {
          'joined lists others only': (j) => j.room === room && j.peers.every((p) => p.peer_id !== me),
        });
        ticker = setInterval(() => {
          send(ws, { type: 'broadcast', room, data: { ts: Date.now(), seq: seq++, pad: PAYLOAD } });
          broadcastsSent.add(1);
        }, BROADCAST_MS);
        setTimeout(leave, stay);
        break;
      case 'message':
        if (m.from === me) {
          selfEchoes.add(1);
        } else if (m.room === room) {
          broadcastsReceived.add(1);
          fanoutLatency.add(Date.now() - m.data.ts);
        }
        break;
      case 'peer-joined':
      case 'peer-left':
        presenceEvents.add(1, { type: m.type });
        break;
      case 'ack':
        if (m.id === 'leave') {
          leavesOk.add(true);
          done();
        }
        break;
      case 'error':
        roomErrors.add(1, { code: m.code || 'unknown' });
        if (m.id === 'join') joinsOk.add(false);
        if (m.id === 'leave') leavesOk.add(false);
        done();
        break;
      default:
        break;
    }
  };
  ws.onerror = (e) => {
    if (!closing) {
      roomErrors.add(1, { code: 'socket' });
      console.warn(`${me}: socket error: ${e.error}`);
    }
  };
  ws.onclose = () => {
    if (!closing) {
      roomErrors.add(1, { code: 'closed-by-server' });
      closing = true;
      clearTimeout(stepTimer);
      if (ticker !== null) clearInterval(ticker);
    }
  };
}
