// signaling.js: pairs of peers negotiating like WebRTC clients do.
//
// VU 2k-1 is peer A and VU 2k is peer B of pair k. Each iteration is one
// session: both connect (A on URL k, B on URL k+1 when several are given, so
// that pairs cross nodes), say hello, meet in a private room, then A sends an
// offer, B answers, and both trickle candidates; after a think time A
// renegotiates, until the session time is up. Then each side sends a `bye`
// carrying how many signals it sent, and the other side counts what it missed.
//
// Every signal carries a per-sender sequence number and the send time, so the
// receiver measures one-way latency (1 ms resolution) and checks order.
//
// Environment (besides SB_URL / SB_URLS / SB_SMOKE, see lib/switchboard.js):
//   SB_PAIRS       pairs (default 50; smoke 2)
//   SB_SESSIONS    sessions per pair (default 3; smoke 2)
//   SB_SESSION_MS  length of one session (default 20000; smoke 2000)
//   SB_THINK_MS    pause between negotiations (default 200; smoke 50)
//   SB_CANDIDATES  candidates each side trickles per negotiation (default 4)
//   SB_SDP_BYTES   size of the offer/answer SDP stand-in (default 2000)
//   SB_P99_MS      latency p99 target (default 50); a benchmark's threshold,
//                  not applied in the smoke profile (a debug build in CI)

import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import { clearTimeout, setTimeout } from 'k6/timers';
import { SMOKE, envInt, open, parse, pickUrl, runId, send } from './lib/switchboard.js';

const PAIRS = envInt('SB_PAIRS', SMOKE ? 2 : 50);
const SESSIONS = envInt('SB_SESSIONS', SMOKE ? 2 : 3);
const SESSION_MS = envInt('SB_SESSION_MS', SMOKE ? 2000 : 20000);
const THINK_MS = envInt('SB_THINK_MS', SMOKE ? 50 : 200);
const CANDIDATES = envInt('SB_CANDIDATES', 4);
const SDP_BYTES = envInt('SB_SDP_BYTES', 2000);
const P99_MS = envInt('SB_P99_MS', 50);
// How long a peer waits for its partner (to appear, or to answer) before giving up.
const PARTNER_TIMEOUT_MS = 10000;

const signalLatency = new Trend('signal_latency', true);
const signalsSent = new Counter('signals_sent');
const signalsDelivered = new Counter('signals_delivered');
const signalsLost = new Counter('signals_lost');
const signalsReordered = new Counter('signals_reordered');
const signalErrors = new Counter('signal_errors');
const negotiationsOk = new Rate('negotiations_ok');
const sessionsOk = new Rate('sessions_ok');

export const options = {
  scenarios: {
    pairs: {
      executor: 'per-vu-iterations',
      vus: PAIRS * 2,
      iterations: SESSIONS,
      maxDuration: `${Math.ceil((SESSIONS * (SESSION_MS + PARTNER_TIMEOUT_MS * 2)) / 1000) + 30}s`,
    },
  },
  thresholds: {
    ...(SMOKE ? {} : { signal_latency: [`p(99)<${P99_MS}`] }),
    signals_delivered: ['count>0'],
    signals_lost: ['count==0'],
    signals_reordered: ['count==0'],
    signal_errors: ['count==0'],
    negotiations_ok: ['rate>0.99'],
    sessions_ok: ['rate>0.99'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { run: runId() };
}

const SDP = 'v=0 '.padEnd(SDP_BYTES, 'x');

export default function (data) {
  const vu = exec.vu.idInTest;
  const pair = Math.ceil(vu / 2);
  const isA = vu % 2 === 1;
  const base = `k6sig-${data.run}-p${pair}-s${exec.vu.iterationInScenario}`;
  const me = `${base}-${isA ? 'a' : 'b'}`;
  const partner = `${base}-${isA ? 'b' : 'a'}`;
  const room = base;
  const ws = open(pickUrl(isA ? pair - 1 : pair));

  let closing = false;
  let sent = 0; // signals sent this session (not counting `bye`)
  let received = 0; // signals received this session (not counting `bye`)
  let nextSeq = 0; // next sequence number expected from the partner
  let sessionEnd = 0;
  let negotiation = null; // { done, timer } of the negotiation in progress (A)
  let candidatesIn = 0; // candidates received in the current negotiation
  let started = false;

  const finish = (ok) => {
    if (closing) return;
    closing = true;
    sessionsOk.add(ok);
    clearTimeout(watchdog);
    clearTimeout(partnerTimer);
    ws.close();
  };
  // Bounds the whole session whatever happens.
  const watchdog = setTimeout(() => {
    signalErrors.add(1, { code: 'session-timeout' });
    finish(false);
  }, SESSION_MS + PARTNER_TIMEOUT_MS * 2);
  const partnerTimer = setTimeout(() => {
    if (!started) {
      signalErrors.add(1, { code: 'partner-timeout' });
      finish(false);
    }
  }, PARTNER_TIMEOUT_MS);

  const signal = (kind, extra) => {
    const payload = Object.assign({ seq: sent, ts: Date.now() }, extra || {});
    send(ws, { type: 'signal', to: partner, kind, data: payload });
    sent += 1;
    signalsSent.add(1);
  };
  const bye = () => send(ws, { type: 'signal', to: partner, kind: 'bye', data: { sent } });

  const negotiate = () => {
    if (closing) return;
    candidatesIn = 0;
    const n = { done: false, timer: null };
    n.timer = setTimeout(() => {
      if (!n.done && !closing) {
        negotiationsOk.add(false);
        signalErrors.add(1, { code: 'negotiation-timeout' });
        finish(false);
      }
    }, PARTNER_TIMEOUT_MS);
    negotiation = n;
    signal('offer', { sdp: SDP });
  };
  const start = () => {
    if (started) return;
    started = true;
    clearTimeout(partnerTimer);
    sessionEnd = Date.now() + SESSION_MS;
    if (isA) negotiate();
  };

  const onSignal = (m) => {
    const d = m.data || {};
    if (m.kind === 'bye') {
      const lost = (d.sent || 0) - received;
      if (lost > 0) signalsLost.add(lost);
      if (isA) {
        finish(lost <= 0);
      } else {
        bye();
        // The server reads frames in order, so `bye` is routed before the close.
        finish(lost <= 0);
      }
      return;
    }
    received += 1;
    signalsDelivered.add(1);
    signalLatency.add(Date.now() - d.ts);
    if (d.seq !== nextSeq) {
      if (d.seq < nextSeq) signalsReordered.add(1);
      else signalsLost.add(d.seq - nextSeq);
    }
    nextSeq = Math.max(nextSeq, d.seq + 1);
    start(); // B starts its session on the first offer.
    if (isA) {
      if (m.kind === 'answer') {
        for (let i = 0; i < CANDIDATES; i++) signal('candidate', { candidate: `candidate:${i} 1 udp 2122260223 10.0.0.1 ${50000 + i} typ host` });
      } else if (m.kind === 'candidate') {
        candidatesIn += 1;
        if (candidatesIn === CANDIDATES && negotiation && !negotiation.done) {
          negotiation.done = true;
          clearTimeout(negotiation.timer);
          negotiationsOk.add(true);
          if (Date.now() < sessionEnd) setTimeout(negotiate, THINK_MS);
          else bye();
        }
      }
    } else if (m.kind === 'offer') {
      candidatesIn = 0;
      signal('answer', { sdp: SDP });
    } else if (m.kind === 'candidate') {
      candidatesIn += 1;
      if (candidatesIn === CANDIDATES) {
        for (let i = 0; i < CANDIDATES; i++) signal('candidate', { candidate: `candidate:${i} 1 udp 2122260223 10.0.0.2 ${60000 + i} typ host` });
      }
    }
  };

  ws.onopen = () => send(ws, { type: 'hello', peer_id: me });
  ws.onmessage = (e) => {
    const m = parse(e);
    if (!m) {
      signalErrors.add(1, { code: 'undecodable' });
      return;
    }
    switch (m.type) {
      case 'welcome':
        check(m, { 'welcome names our peer id': (w) => w.peer_id === me });
        send(ws, { type: 'join', room });
        break;
      case 'joined':
        check(m, { 'joined the pair room': (j) => j.room === room });
        if (isA && m.peers.some((p) => p.peer_id === partner)) start();
        break;
      case 'peer-joined':
        if (isA && m.peer_id === partner) start();
        break;
      case 'signal':
        if (m.from === partner) onSignal(m);
        else signalErrors.add(1, { code: 'foreign-signal' });
        break;
      case 'error':
        signalErrors.add(1, { code: m.code || 'unknown' });
        break;
      default:
        break;
    }
  };
  ws.onerror = (e) => {
    if (!closing) {
      signalErrors.add(1, { code: 'socket' });
      console.warn(`${me}: socket error: ${e.error}`);
    }
  };
  ws.onclose = () => {
    if (!closing) {
      signalErrors.add(1, { code: 'closed-by-server' });
      closing = true;
      sessionsOk.add(false);
      clearTimeout(watchdog);
      clearTimeout(partnerTimer);
    }
  };
}
