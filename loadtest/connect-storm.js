// connect-storm.js: many short sessions arriving at a rising rate.
//
// Each iteration: connect, hello (welcome), join a room (joined), leave
// (acknowledged), disconnect. The arrival rate ramps up to SB_RATE sessions
// per second and holds there, so the connect path (upgrade, hello, directory,
// room registry) is measured under pressure; k6 counts sessions it could not
// start in time as dropped_iterations.
//
// Environment (besides SB_URL / SB_URLS / SB_SMOKE, see lib/switchboard.js):
//   SB_RATE        sessions per second at the plateau (default 200; smoke 20)
//   SB_RAMP        time to reach the plateau (default 10s; smoke 1s)
//   SB_HOLD        time at the plateau (default 30s; smoke 3s)
//   SB_ROOMS       rooms the sessions spread over (default 50)
//   SB_MAX_VUS     most VUs k6 may use (default 1000; smoke 50)
//   SB_P95_MS      connect-to-welcome p95 target (default 100); a benchmark's
//                  threshold, not applied in the smoke profile

import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import { clearTimeout, setTimeout } from 'k6/timers';
import { SMOKE, envInt, open, parse, pickUrl, runId, send } from './lib/switchboard.js';

const RATE = envInt('SB_RATE', SMOKE ? 20 : 200);
const RAMP = __ENV.SB_RAMP || (SMOKE ? '1s' : '10s');
const HOLD = __ENV.SB_HOLD || (SMOKE ? '3s' : '30s');
const ROOMS = Math.max(1, envInt('SB_ROOMS', 50));
const MAX_VUS = envInt('SB_MAX_VUS', SMOKE ? 50 : 1000);
const P95_MS = envInt('SB_P95_MS', 100);
const SESSION_TIMEOUT_MS = 10000;

const helloTime = new Trend('storm_hello_time', true);
const joinTime = new Trend('storm_join_time', true);
const sessionTime = new Trend('storm_session_time', true);
const stormOk = new Rate('storm_ok');
const stormErrors = new Counter('storm_errors');

export const options = {
  scenarios: {
    storm: {
      executor: 'ramping-arrival-rate',
      startRate: Math.max(1, Math.floor(RATE / 10)),
      timeUnit: '1s',
      preAllocatedVUs: Math.min(MAX_VUS, Math.max(10, RATE)),
      maxVUs: MAX_VUS,
      stages: [
        { target: RATE, duration: RAMP },
        { target: RATE, duration: HOLD },
      ],
      gracefulStop: `${Math.ceil(SESSION_TIMEOUT_MS / 1000) + 5}s`,
    },
  },
  thresholds: {
    storm_ok: ['rate>0.99'],
    storm_errors: ['count==0'],
    ...(SMOKE ? {} : { storm_hello_time: [`p(95)<${P95_MS}`] }),
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { run: runId() };
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const me = `k6storm-${data.run}-${n}`;
  const room = `k6storm-${data.run}-r${n % ROOMS}`;
  const ws = open(pickUrl(n));
  const t0 = Date.now();
  let tJoin = 0;
  let closing = false;

  const finish = (ok, code) => {
    if (closing) return;
    closing = true;
    clearTimeout(timer);
    stormOk.add(ok);
    if (!ok) stormErrors.add(1, { code });
    else sessionTime.add(Date.now() - t0);
    ws.close();
  };
  const timer = setTimeout(() => finish(false, 'timeout'), SESSION_TIMEOUT_MS);

  ws.onopen = () => send(ws, { type: 'hello', peer_id: me });
  ws.onmessage = (e) => {
    const m = parse(e);
    if (!m) {
      finish(false, 'undecodable');
      return;
    }
    switch (m.type) {
      case 'welcome':
        helloTime.add(Date.now() - t0);
        check(m, { 'welcome names our peer id': (w) => w.peer_id === me });
        tJoin = Date.now();
        send(ws, { type: 'join', room, id: 1 });
        break;
      case 'joined':
        joinTime.add(Date.now() - tJoin);
        send(ws, { type: 'leave', room, id: 2 });
        break;
      case 'ack':
        if (m.id === 2) finish(true);
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
      finish(false, 'socket');
    }
  };
  ws.onclose = () => {
    if (!closing) finish(false, 'closed-by-server');
  };
}
