// pairing.js: rendezvous workers asking to be paired, all at about the same moment.
//
// Every VU is one worker: it connects (round robin over SB_URLS, so with three
// URLs the workers are spread over three nodes), says hello, waits for a
// common start time (so that the `pair`s go out together, like the issue's
// "10,000 workers all paired within 2 s"), sends `pair` in pool SB_POOL and
// waits for `paired`. Then it checks the pairing:
//   - locally: a pairing id, a role (`initiator` / `responder`), a partner
//     that is not itself;
//   - with its partner (SB_EXCHANGE=1, the default): each side sends one
//     `signal` through the pairing carrying what it was told (pairing id, its
//     role, the partner it was given); the receiver checks that the signal
//     comes from the partner it was given, names it back, carries the same
//     pairing id, and the opposite role. That proves the pairing symmetric
//     (both sides see each other under one pairing id) and usable for signaling.
// Then it disconnects. A worker that sees a second `paired` counts an error.
//
// The clock of `pair_latency` runs from `pair` written to `paired` read
// (1 ms resolution). A worker not connected by the start time sends its
// `pair` when it is ready (counted in `pair_late_starts`): its partner may
// then wait for it, which shows in the latency, as it should.
//
// Environment (besides SB_URL / SB_URLS / SB_SMOKE, see lib/switchboard.js):
//   SB_WORKERS     workers (default 1000; smoke 20), rounded down to even
//   SB_POOL        pool name (default `k6pair-<run id>`: fresh per run, so no
//                  worker queued by an earlier run is matched first)
//   SB_START_MS    time from setup to the common `pair` moment, for the
//                  workers to connect (default 3000 + SB_WORKERS / 2; smoke 1500)
//   SB_MAX_MS      most time from `pair` to `paired` for any worker: the
//                  threshold on max(pair_latency) (default 2000, the issue's
//                  target); a benchmark's threshold, not applied in the smoke
//                  profile (a worker that is never paired still fails it, by
//                  SB_WAIT_MS and pairs_ok)
//   SB_WAIT_MS     how long a worker waits for `paired` before giving up
//                  (default 10000)
//   SB_EXCHANGE    1 (default): exchange a signal with the partner; 0: local checks only
//   SB_LINGER_MS   after the exchange, stay connected this long to catch a
//                  second `paired` (default 200)
//
// Thresholds (k6 exits 99 when one is crossed): pair_latency max < SB_MAX_MS
// (not in the smoke profile), pairs_ok (paired / `pair` sent) == 100 %, pair_symmetric == 100 %,
// pair_errors == 0.

import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import { clearTimeout, setTimeout } from 'k6/timers';
import { SMOKE, envInt, open, parse, pickUrl, runId, send } from './lib/switchboard.js';

const WORKERS = Math.max(2, envInt('SB_WORKERS', SMOKE ? 20 : 1000) & ~1);
const START_MS = envInt('SB_START_MS', SMOKE ? 1500 : 3000 + Math.ceil(WORKERS / 2));
const MAX_MS = envInt('SB_MAX_MS', 2000);
const WAIT_MS = envInt('SB_WAIT_MS', 10000);
const EXCHANGE = envInt('SB_EXCHANGE', 1) === 1;
const LINGER_MS = envInt('SB_LINGER_MS', 200);

const pairLatency = new Trend('pair_latency', true);
const exchangeLatency = new Trend('pair_exchange_latency', true);
const pairsOk = new Rate('pairs_ok');
const pairSymmetric = new Rate('pair_symmetric');
const pairsSent = new Counter('pairs_sent');
const pairErrors = new Counter('pair_errors');
const lateStarts = new Counter('pair_late_starts');

export const options = {
  scenarios: {
    workers: {
      executor: 'per-vu-iterations',
      vus: WORKERS,
      iterations: 1,
      maxDuration: `${Math.ceil((START_MS + WAIT_MS * 2 + LINGER_MS) / 1000) + 30}s`,
    },
  },
  setupTimeout: '60s',
  thresholds: {
    ...(SMOKE ? {} : { pair_latency: [`max<${MAX_MS}`] }),
    pairs_ok: ['rate==1'],
    pair_symmetric: ['rate==1'],
    pair_errors: ['count==0'],
    checks: ['rate==1'],
  },
};

export function setup() {
  const run = runId();
  return { run, pool: __ENV.SB_POOL || `k6pair-${run}`, startAt: Date.now() + START_MS };
}

export default function (data) {
  const n = exec.vu.idInTest - 1;
  const me = `k6pair-${data.run}-w${n}`;
  const ws = open(pickUrl(n));

  let closing = false;
  let sentAt = 0; // when `pair` was written
  let paired = null; // the first `paired`
  let pairedCount = 0;
  let partnerSignal = null; // the partner's signal (may arrive before our own `paired`)
  let verified = false;
  let lingerTimer = null;
  let startTimer = null;

  const error = (code) => pairErrors.add(1, { code });
  const finish = () => {
    if (closing) return;
    closing = true;
    clearTimeout(watchdog);
    clearTimeout(startTimer);
    clearTimeout(lingerTimer);
    ws.close();
  };
  // Bounds the whole worker whatever happens.
  const watchdog = setTimeout(() => {
    if (sentAt === 0) {
      error('no-start');
    } else if (!paired) {
      pairsOk.add(false);
      error('paired-timeout');
    } else if (EXCHANGE && !verified) {
      pairSymmetric.add(false);
      error('exchange-timeout');
    }
    finish();
  }, Math.max(0, data.startAt - Date.now()) + WAIT_MS);

  const done = () => {
    // Stay a little to catch a second `paired`, then go.
    lingerTimer = setTimeout(finish, LINGER_MS);
  };

  // Checks the partner's signal against our own pairing.
  const verify = () => {
    if (verified || !paired || !partnerSignal) return;
    verified = true;
    const d = partnerSignal.data || {};
    const ok = check(null, {
      'the signal comes from the partner we were given': () => partnerSignal.from === paired.partner,
      'the partner names us back': () => d.partner === me,
      'both sides share the pairing id': () => d.pairing_id === paired.pairing_id,
      'one initiator, one responder': () =>
        (d.role === 'initiator' && paired.role === 'responder') ||
        (d.role === 'responder' && paired.role === 'initiator'),
    });
    pairSymmetric.add(ok);
    if (!ok) error('asymmetric');
    exchangeLatency.add(Date.now() - paired.at);
    done();
  };

  const sendPair = () => {
    if (closing) return;
    sentAt = Date.now();
    pairsSent.add(1);
    send(ws, { type: 'pair', pool: data.pool, id: 1 });
  };

  ws.onopen = () => send(ws, { type: 'hello', peer_id: me });
  ws.onmessage = (e) => {
    const m = parse(e);
    if (!m) {
      error('undecodable');
      return;
    }
    switch (m.type) {
      case 'welcome': {
        const wait = data.startAt - Date.now();
        if (wait > 0) {
          startTimer = setTimeout(sendPair, wait);
        } else {
          lateStarts.add(1);
          sendPair();
        }
        break;
      }
      case 'ack':
        break; // may come after `paired` (see docs/RENDEZVOUS.md, ordering note)
      case 'paired': {
        pairedCount += 1;
        if (pairedCount > 1) {
          error('paired-twice');
          break;
        }
        const at = Date.now();
        const partner = (m.peer && m.peer.peer_id) || '';
        paired = { at, pairing_id: m.pairing_id, role: m.role, partner };
        pairLatency.add(at - sentAt);
        pairsOk.add(true);
        const ok = check(m, {
          'paired has a pairing id': (p) => typeof p.pairing_id === 'string' && p.pairing_id.length > 0,
          'paired has a role': (p) => p.role === 'initiator' || p.role === 'responder',
          'the partner is another worker': () => partner.length > 0 && partner !== me,
        });
        if (!ok) error('bad-paired');
        if (EXCHANGE) {
          send(ws, {
            type: 'signal',
            to: partner,
            kind: 'pairing-check',
            data: { pairing_id: m.pairing_id, role: m.role, partner },
          });
          verify();
        } else {
          pairSymmetric.add(ok);
          done();
        }
        break;
      }
      case 'signal':
        if (EXCHANGE && m.kind === 'pairing-check' && !partnerSignal) {
          partnerSignal = m;
          verify();
        } else {
          error('foreign-signal');
        }
        break;
      case 'pair-lost':
        // The partner leaves once it has our signal; that is the end of the
        // exchange, not an error. Before we are done it is one.
        if (!verified && !(paired && !EXCHANGE)) error(`pair-lost-${m.reason || 'unknown'}`);
        break;
      case 'error':
        error(m.code || 'unknown');
        break;
      default:
        break;
    }
  };
  ws.onerror = (e) => {
    if (!closing) {
      error('socket');
      console.warn(`${me}: socket error: ${e.error}`);
    }
  };
  ws.onclose = () => {
    if (!closing) {
      error('closed-by-server');
      if (sentAt > 0 && !paired) pairsOk.add(false);
      closing = true;
      clearTimeout(watchdog);
      clearTimeout(startTimer);
      clearTimeout(lingerTimer);
    }
  };
}
