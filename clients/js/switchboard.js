// Switchboard browser and Node client: an ES module with no dependencies and
// no build step. It speaks the native protocol of docs/PROTOCOL.md at `/ws`:
// the `switchboard.v1.json` or `switchboard.v1.msgpack` subprotocol,
// hello/welcome, join/leave, signal, broadcast, ping, the server's events, and
// automatic reconnection (jittered exponential backoff, the server's
// `reconnect` hint and close codes 1012/1013, a list of node URLs tried in
// turn, re-hello with the peer id and `reconnect_secret`, re-join of the
// rooms). MessagePack is a small encoder/decoder below, exported as `msgpack`.
//
// Usage:
//   import { SwitchboardClient } from "./switchboard.js";
//   const sb = new SwitchboardClient(["ws://a:8080/ws", "ws://b:8080/ws"], { peerId: "alice" });
//   sb.on("signal", (m) => console.log(m.from, m.kind, m.data));
//   await sb.connect();
//   await sb.join("call-42");
//   await sb.signal("bob", "offer", { sdp: "..." });
//
// See README.md beside this file and switchboard.d.ts for the whole API.

/** The subprotocol of each encoding (docs/PROTOCOL.md §1). */
export const SUBPROTOCOLS = Object.freeze({
  json: "switchboard.v1.json",
  msgpack: "switchboard.v1.msgpack",
});

/** Close codes after which the client does not reconnect by itself. */
export const FATAL_CLOSE_CODES = Object.freeze({
  4001: "unauthorized", // a new token is needed first
  4002: "replaced", // another instance of this peer took over
});

/** Errors of `hello` that no retry fixes (the socket stays open or 4001 follows). */
const FATAL_HELLO_CODES = new Set([
  "unauthorized",
  "invalid-peer-id",
  "invalid-message",
  "meta-too-large",
  "nesting-too-deep",
  "malformed",
  "unknown-type",
  "already-hello",
]);

/** Which server message answers which request type. */
const ANSWERS = { hello: "welcome", join: "joined", ping: "pong", leave: "ack", signal: "ack", broadcast: "ack" };

/** An error from the server (`code` as in docs/PROTOCOL.md §11) or from the client itself. */
export class SwitchboardError extends Error {
  /**
   * @param {string} code  a server error code, or one of the client's own:
   *   `timeout`, `connection-lost`, `closed`, `gave-up`, `connect-failed`
   * @param {string} message
   * @param {object} [extra]  `closeCode`, `closeReason`, `request`
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    Object.assign(this, extra);
  }
}

// ---------------------------------------------------------------------------
// The client

const OPEN = 1;

const DEFAULTS = {
  encoding: "json",
  reconnect: true,
  minDelayMs: 250,
  maxDelayMs: 10000,
  maxAttempts: Infinity,
  drainJitterMs: 1000,
  requestTimeoutMs: 10000,
  connectTimeoutMs: 10000,
  resume: true,
};

export class SwitchboardClient {
  /**
   * @param {string | string[]} urls  one `ws://host:port/ws` URL, or several
   *   (nodes of one cluster): reconnects go to the next one in turn
   * @param {object} [options]  see switchboard.d.ts (`ClientOptions`)
   */
  constructor(urls, options = {}) {
    const list = Array.isArray(urls) ? urls.slice() : [urls];
    if (list.length === 0 || list.some((u) => typeof u !== "string" || u === "")) {
      throw new TypeError("SwitchboardClient: give one URL or a non-empty list of URLs");
    }
    this.urls = list;
    this.options = { ...DEFAULTS, ...options };
    if (!(this.options.encoding in SUBPROTOCOLS)) {
      throw new TypeError(`SwitchboardClient: encoding must be "json" or "msgpack"`);
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError(
        "SwitchboardClient: no WebSocket constructor (pass options.WebSocket; Node 20 needs --experimental-websocket or the ws package)",
      );
    }
    this._setTimeout = options.setTimeout ?? ((f, ms) => globalThis.setTimeout(f, ms));
    this._clearTimeout = options.clearTimeout ?? ((t) => globalThis.clearTimeout(t));
    this._random = options.random ?? Math.random;

    /** The peer id: the requested one until the first `welcome`, then the server's. */
    this.peerId = options.peerId ?? null;
    /** The node serving the current connection (`welcome.node`). */
    this.node = null;
    /** The last `welcome`. */
    this.welcome = null;
    /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = "idle";
    /** The URL of the current connection. */
    this.url = null;

    this._urlIndex = 0;
    this._secret = null;
    // The session's resume token and the last `seq` read of it (resume).
    this._seq = { token: null, last: 0 };
    this._nextId = 1;
    this._pending = new Map(); // id -> {session, expect, resolve, reject, timer, type}
    this._rooms = new Map(); // room -> {meta, token, peers: Map<peer_id, meta>}
    this._listeners = new Map();
    this._current = null; // the live session
    this._loop = null; // the running connect/reconnect loop's promise
    this._sleeping = null; // {timer, wake}
    this._openWaiters = new Set();
    this._opening = new Set(); // sessions between `new WebSocket` and ready
    this._closedByUser = false;
  }

  // ----- events -----------------------------------------------------------

  /**
   * Calls `fn` for every event of `type`: a server message type (`signal`,
   * `message`, `peer-joined`, `peer-left`, `room-closed`, `joined`,
   * `reconnect`, `error`, `paired`, ...) or a client event (`welcome`,
   * `state`, `close`, `reconnecting`, `reconnected`, `rejoin-failed`), or
   * `*` for every server message. Returns a function that removes it.
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  /** Resolves with the next event of `type`. */
  once(type) {
    return new Promise((resolve) => {
      const off = this.on(type, (ev) => {
        off();
        resolve(ev);
      });
    });
  }

  _emit(type, ev) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(ev);
      } catch (e) {
        (this.options.onListenerError ?? ((err) => console.error("switchboard listener:", err)))(e);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state });
    if (state === "open") {
      for (const w of this._openWaiters) w.resolve();
      this._openWaiters.clear();
    } else if (state === "closed") {
      for (const w of this._openWaiters) w.reject(new SwitchboardError("closed", "the client is closed"));
      this._openWaiters.clear();
    }
  }

  // ----- public API -------------------------------------------------------

  /** The rooms this client is in, each with its other members (peer id → meta). */
  get rooms() {
    const out = new Map();
    for (const [room, r] of this._rooms) out.set(room, new Map(r.peers));
    return out;
  }

  /**
   * Connects, says `hello` and resolves with the `welcome`. Retries with
   * backoff while `options.reconnect` is on; rejects on an error no retry
   * fixes (`unauthorized`, `peer-id-taken`, a bad peer id, ...).
   */
  connect() {
    if (this.state === "open") return Promise.resolve(this.welcome);
    if (this._loop) return this._loop;
    this._closedByUser = false;
    this._setState("connecting");
    return this._runLoop({ first: true, firstDelayMs: 0 });
  }

  /** Joins `room` and resolves with the `joined` answer (`peers`: the other members). */
  async join(room, { meta, token } = {}) {
    return this._request({ type: "join", room, meta, token });
  }

  /** Leaves `room`; resolves on the server's `ack`. */
  async leave(room) {
    const entry = this._rooms.get(room);
    this._rooms.delete(room);
    try {
      await this._request({ type: "leave", room });
    } catch (e) {
      if (e.code !== "not-in-room" && entry && e.code !== "connection-lost") this._rooms.set(room, entry);
      throw e;
    }
  }

  /**
   * Sends `data` to peer `to` as a signal of `kind`. With `ack` (the
   * default) it resolves on the server's `ack` (accepted for delivery) and
   * rejects with its error; with `ack: false` no id is sent, the promise
   * resolves once the frame is written, and a failure arrives as an `error`
   * event (fewer frames for ICE trickling).
   */
  signal(to, kind, data, { ack = true } = {}) {
    return this._request({ type: "signal", to, kind, data }, { ack });
  }

  /** Sends `data` to every other member of `room` (`message` events there). */
  broadcast(room, data, { ack = true } = {}) {
    return this._request({ type: "broadcast", room, data }, { ack });
  }

  /** Sends `ping`; resolves with the round-trip time in milliseconds. */
  async ping() {
    const t0 = now();
    await this._request({ type: "ping" });
    return now() - t0;
  }

  /** Sends any client message (rendezvous `pair`, `unpair`, `endpoint`, ...); resolves with its answer. */
  request(message) {
    return this._request({ ...message });
  }

  /** Closes the connection for good: no reconnect; pending requests reject with `closed`. */
  close(code = 1000, reason = "") {
    this._closedByUser = true;
    if (this._sleeping) this._sleeping.wake(new SwitchboardError("closed", "the client was closed"));
    const s = this._current;
    this._current = null;
    for (const [id, p] of this._pending) {
      this._pending.delete(id);
      this._clearTimeout(p.timer);
      p.reject(new SwitchboardError("closed", "the client was closed"));
    }
    for (const o of this._opening) o.ws.close();
    if (s) {
      s.retired = true;
      try {
        s.ws.close(code, reason);
      } catch {
        s.ws.close();
      }
      this._emit("close", { code, reason, url: s.url, willReconnect: false });
    }
    this._setState("closed");
  }

  // ----- requests ---------------------------------------------------------

  async _request(msg, { ack = true } = {}) {
    if (this.state === "closed" || this.state === "idle") {
      throw new SwitchboardError("closed", `cannot send \`${msg.type}\`: the client is ${this.state}`);
    }
    const deadline = now() + this.options.requestTimeoutMs;
    if (this.state !== "open") await this._whenOpen(this.options.requestTimeoutMs, msg.type);
    const s = this._current;
    if (!ack) {
      this._send(s, msg);
      return undefined;
    }
    return this._requestOn(s, msg, Math.max(0, deadline - now()));
  }

  /** Sends `msg` with a fresh id on session `s`; resolves with its answer. */
  _requestOn(s, msg, timeoutMs) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = this._setTimeout(() => {
        this._pending.delete(id);
        reject(new SwitchboardError("timeout", `no answer to \`${msg.type}\` within ${timeoutMs} ms`, { request: msg }));
      }, timeoutMs);
      this._pending.set(id, { session: s, expect: ANSWERS[msg.type] ?? "ack", resolve, reject, timer, type: msg.type, msg });
      try {
        this._send(s, { ...msg, id });
      } catch (e) {
        this._pending.delete(id);
        this._clearTimeout(timer);
        reject(e);
      }
    });
  }

  _whenOpen(timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const w = {
        resolve: () => {
          this._clearTimeout(w.timer);
          resolve();
        },
        reject: (e) => {
          this._clearTimeout(w.timer);
          reject(e);
        },
      };
      w.timer = this._setTimeout(() => {
        this._openWaiters.delete(w);
        reject(new SwitchboardError("timeout", `not connected within ${timeoutMs} ms to send \`${what}\``));
      }, timeoutMs);
      this._openWaiters.add(w);
    });
  }

  _send(s, msg) {
    if (!s || s.ws.readyState !== OPEN) {
      throw new SwitchboardError("connection-lost", `cannot send \`${msg.type}\`: the socket is not open`);
    }
    const clean = {};
    for (const [k, v] of Object.entries(msg)) if (v !== undefined) clean[k] = v;
    s.ws.send(this.options.encoding === "msgpack" ? msgpack.encode(clean) : JSON.stringify(clean));
    this.options.trace?.("out", clean, s.url);
  }

  // ----- sessions (one socket each) ---------------------------------------

  /**
   * Opens a socket to `url`, says `hello` (with the peer id and
   * `reconnect_secret` of the last `welcome`, if any) and re-joins the
   * rooms; resolves with the session once all of that is done.
   */
  _openSession(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WebSocket(url, SUBPROTOCOLS[this.options.encoding]);
      } catch (e) {
        reject(new SwitchboardError("connect-failed", `cannot open ${url}: ${e.message}`));
        return;
      }
      if (this.options.encoding === "msgpack") ws.binaryType = "arraybuffer";
      const s = { ws, url, ready: false, retired: false, replaces: null };
      this._opening.add(s);
      let settled = false;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        this._opening.delete(s);
        this._clearTimeout(timer);
        s.retired = true;
        this._rejectPending(s, err);
        try {
          ws.close();
        } catch {
          /* already closed */
        }
        reject(err);
      };
      const timer = this._setTimeout(
        () => fail(new SwitchboardError("connect-failed", `no welcome from ${url} within ${this.options.connectTimeoutMs} ms`)),
        this.options.connectTimeoutMs,
      );
      ws.onmessage = (ev) => this._onFrame(s, ev.data);
      ws.onerror = () => {
        /* a close event follows */
      };
      ws.onclose = (ev) => {
        if (!settled) {
          fail(
            new SwitchboardError("connect-failed", `${url} closed the connection (${ev.code}${ev.reason ? " " + ev.reason : ""})`, {
              closeCode: ev.code,
              closeReason: ev.reason,
              fatal: ev.code in FATAL_CLOSE_CODES,
            }),
          );
        } else {
          this._onSessionClose(s, ev);
        }
      };
      ws.onopen = async () => {
        try {
          const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
          s.helloSent = true;
          // Resume the session when it has a token: the server then keeps
          // its rooms and sends what it missed after `last_seq`.
          const resume = this.options.resume !== false;
          const resumeToken = resume ? this._seq.token : null;
          const welcome = await this._requestOn(
            s,
            {
              type: "hello",
              peer_id: this.peerId ?? undefined,
              meta: this.options.meta,
              token,
              reconnect_secret: this._secret ?? undefined,
              resumable: resume || undefined,
              resume: resumeToken ?? undefined,
              last_seq: resumeToken ? this._seq.last : undefined,
            },
            this.options.connectTimeoutMs,
          );
          this.peerId = welcome.peer_id;
          this._secret = welcome.reconnect_secret ?? null;
          s.welcome = welcome;
          // The server now closes the socket this one took over (4002): stop
          // using it, and hold new requests until the rooms are joined again.
          const old = this._current;
          if (old && old !== s) {
            old.retired = true;
            s.replaces = old;
            this._current = null;
            this._setState("reconnecting");
          }
          const failed = [];
          // A resumed session is still in its rooms.
          const rejoin = welcome.resumed ? [] : [...this._rooms];
          for (const [room, r] of rejoin) {
            try {
              await this._requestOn(s, { type: "join", room, meta: r.meta, token: r.token }, this.options.requestTimeoutMs);
            } catch (e) {
              if (e.code === "connection-lost" || e.code === "timeout") throw e;
              this._rooms.delete(room);
              failed.push({ room, error: e });
            }
          }
          if (settled) return;
          settled = true;
          this._opening.delete(s);
          this._clearTimeout(timer);
          s.ready = true;
          for (const f of failed) this._emit("rejoin-failed", f);
          resolve(s);
        } catch (e) {
          fail(e instanceof SwitchboardError ? e : new SwitchboardError("connect-failed", String(e?.message ?? e)));
        }
      };
    });
  }

  /** Makes `s` the live session; the one it replaces is closed (the server closes it with 4002 too). */
  _install(s) {
    const old = s.replaces ?? this._current;
    s.replaces = null;
    this._current = s;
    this.url = s.url;
    this.node = s.welcome.node;
    const first = this.welcome === null;
    this.welcome = s.welcome;
    if (old && old !== s) {
      old.retired = true;
      try {
        old.ws.close(1000, "reconnected");
      } catch {
        /* already closed */
      }
    }
    this._setState("open");
    this._emit("welcome", s.welcome);
    if (!first) {
      const ev = { url: s.url, node: s.welcome.node, rooms: [...this._rooms.keys()] };
      if (s.welcome.resumed) ev.resumed = true;
      this._emit("reconnected", ev);
    }
  }

  _rejectPending(s, err) {
    for (const [id, p] of this._pending) {
      if (p.session !== s) continue;
      this._pending.delete(id);
      this._clearTimeout(p.timer);
      p.reject(err);
    }
  }

  _onSessionClose(s, ev) {
    const lost = new SwitchboardError("connection-lost", `the connection closed (${ev.code}) before the answer`, {
      closeCode: ev.code,
      closeReason: ev.reason,
    });
    this._rejectPending(s, lost);
    if (s.retired || s !== this._current) return;
    this._current = null;
    // 4002 while this client's own new connection has said `hello`: that
    // connection is what replaced this one (its close can overtake the new
    // socket's `welcome`), so it is no reason to stop.
    const ownTakeover = ev.code === 4002 && [...this._opening].some((o) => o.helloSent);
    const fatal = ev.code in FATAL_CLOSE_CODES && !ownTakeover;
    const willReconnect = !this._closedByUser && !fatal && this.options.reconnect !== false;
    this._emit("close", { code: ev.code, reason: ev.reason, url: s.url, willReconnect });
    if (!willReconnect) {
      this._setState("closed");
      return;
    }
    this._setState("reconnecting");
    if (this._loop) return; // a handover after a `reconnect` hint is already under way
    // 1012 (drain) without a hint: a short random delay, as the hint would give.
    const firstDelayMs = ev.code === 1012 ? Math.floor(this._random() * this.options.drainJitterMs) : undefined;
    this._runLoop({ first: false, firstDelayMs }).catch(() => {
      /* reported through `close` and the state */
    });
  }

  // ----- the connect / reconnect loop ---------------------------------------

  /** The delay before retry number `n` (0-based): exponential, capped, jittered into [d/2, d]. */
  backoffDelay(n) {
    const d = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** n);
    return Math.floor(d / 2 + this._random() * (d / 2));
  }

  _runLoop({ first, firstDelayMs }) {
    const loop = (async () => {
      try {
        for (let attempt = 0; ; attempt++) {
          if (this._closedByUser) throw new SwitchboardError("closed", "the client was closed");
          if (attempt >= this.options.maxAttempts) {
            throw new SwitchboardError("gave-up", `no connection after ${attempt} attempts`);
          }
          // The first connect starts with the first URL; every retry moves on
          // to the next one, so a dead or draining node is left behind.
          if (!(first && attempt === 0)) this._urlIndex = (this._urlIndex + 1) % this.urls.length;
          const url = this.urls[this._urlIndex];
          const backoffN = firstDelayMs === undefined ? attempt : attempt - 1;
          const delayMs = attempt === 0 && firstDelayMs !== undefined ? firstDelayMs : this.backoffDelay(backoffN);
          if (!(first && attempt === 0)) this._emit("reconnecting", { attempt: attempt + 1, delayMs, url });
          if (delayMs > 0) await this._sleep(delayMs);
          if (this._closedByUser) throw new SwitchboardError("closed", "the client was closed");
          try {
            const s = await this._openSession(url);
            if (this._closedByUser) {
              s.retired = true;
              s.ws.close(1000);
              throw new SwitchboardError("closed", "the client was closed");
            }
            this._install(s);
            return s.welcome;
          } catch (e) {
            if (e.code === "closed") throw e;
            const fatal = e.fatal || FATAL_HELLO_CODES.has(e.code) || (e.code === "peer-id-taken" && !this._secret);
            if (fatal || this.options.reconnect === false) throw e;
            this._emit("connect-error", { url, error: e });
          }
        }
      } catch (e) {
        if (!this._current || this._current.ws.readyState !== OPEN) {
          this._current = null;
          this._setState("closed");
        }
        throw e;
      } finally {
        this._loop = null;
      }
    })();
    this._loop = loop;
    return loop;
  }

  _sleep(ms) {
    return new Promise((resolve, reject) => {
      const timer = this._setTimeout(() => {
        this._sleeping = null;
        resolve();
      }, ms);
      this._sleeping = {
        timer,
        wake: (err) => {
          this._clearTimeout(timer);
          this._sleeping = null;
          reject(err);
        },
      };
    });
  }

  // ----- incoming frames --------------------------------------------------

  _onFrame(s, raw) {
    let msg;
    try {
      msg = typeof raw === "string" ? JSON.parse(raw) : msgpack.decode(toBytes(raw));
    } catch (e) {
      this._emit("error", { type: "error", code: "client-decode", message: `undecodable frame: ${e.message}` });
      return;
    }
    if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") return;
    this.options.trace?.("in", msg, s.url);
    if (msg.id !== undefined && msg.id !== null && this._pending.has(msg.id)) {
      const p = this._pending.get(msg.id);
      if (p.session === s && (msg.type === p.expect || msg.type === "error")) {
        this._pending.delete(msg.id);
        this._clearTimeout(p.timer);
        if (msg.type === "welcome") {
          // Here too: what a resumed session missed follows at once.
          s.resumeToken = msg.resume_token ?? null;
          if (!msg.resumed) this._seq = { token: s.resumeToken, last: 0 };
        }
        if (msg.type === "joined") {
          // Recorded here, not when the promise's continuation runs: the
          // room's next events may be handled before that.
          this._rooms.set(msg.room, { meta: p.msg.meta, token: p.msg.token, peers: peerMap(msg.peers) });
        }
        if (msg.type === "error") p.reject(new SwitchboardError(msg.code, msg.message, { request: p.type }));
        else p.resolve(msg);
        if (msg.type === "joined") this._emit("joined", msg);
        return;
      }
    }
    if (typeof msg.seq === "number" && s.resumeToken && s.resumeToken === this._seq.token) {
      // A message of this session read already: a resume sends again what
      // the old socket may have lost, and the old socket may still deliver.
      if (msg.seq <= this._seq.last) return;
      this._seq.last = msg.seq;
    }
    if (s.retired && s !== this._current && !["signal", "message"].includes(msg.type)) {
      // A replaced socket's last words: only what peers sent is still news.
      return;
    }
    switch (msg.type) {
      case "peer-joined": {
        const r = this._rooms.get(msg.room);
        if (!r) return; // a room this client has left
        r.peers.set(msg.peer_id, msg.meta ?? null);
        break;
      }
      case "peer-left": {
        const r = this._rooms.get(msg.room);
        if (!r) return;
        r.peers.delete(msg.peer_id);
        break;
      }
      case "message":
        if (!this._rooms.has(msg.room)) return;
        break;
      case "room-closed":
        if (!this._rooms.delete(msg.room)) return;
        break;
      default:
        break;
    }
    this._emit(msg.type, msg);
    this._emit("*", msg);
    if (msg.type === "reconnect") this._onReconnectHint(msg);
  }

  /**
   * The node is draining: after `after_ms`, connect to the next URL, take
   * the peer id over with the secret, re-join, then drop the old socket
   * (make before break, docs/PROTOCOL.md §10). The old socket keeps serving
   * meanwhile.
   */
  _onReconnectHint(msg) {
    if (this._closedByUser || this.options.reconnect === false || this._loop) return;
    const afterMs = Number.isFinite(msg.after_ms) ? Math.max(0, msg.after_ms) : 0;
    this._runLoop({ first: false, firstDelayMs: afterMs }).catch(() => {
      /* reported through `close` and the state */
    });
  }
}

function peerMap(peers) {
  const m = new Map();
  for (const p of peers ?? []) m.set(p.peer_id, p.meta ?? null);
  return m;
}

function now() {
  return globalThis.performance?.now?.() ?? Date.now();
}

function toBytes(raw) {
  if (raw instanceof Uint8Array) return raw;
  if (raw instanceof ArrayBuffer) return new Uint8Array(raw);
  if (ArrayBuffer.isView(raw)) return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  throw new TypeError(`unexpected frame data (${Object.prototype.toString.call(raw)})`);
}

// ---------------------------------------------------------------------------
// MessagePack: what the protocol needs (maps with string keys, arrays,
// strings, bin, integers up to 64 bits, floats, nil, booleans). `ext` is
// refused, as the server refuses it. Integers beyond ±2^53 decode to BigInt.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

export const msgpack = Object.freeze({
  /** Encodes a value; `undefined` map values are left out, elsewhere they are nil. */
  encode(value) {
    const out = new Writer();
    writeValue(out, value, 0);
    return out.bytes();
  },
  /** Decodes one value that fills `bytes` exactly. */
  decode(bytes) {
    const r = { b: bytes, v: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), i: 0 };
    const value = readValue(r, 0);
    if (r.i !== bytes.length) throw new Error(`msgpack: ${bytes.length - r.i} bytes after the value`);
    return value;
  },
});

const MAX_DEPTH = 512;

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }
  ensure(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(x) {
    this.ensure(1);
    this.buf[this.len++] = x;
  }
  u16(x) {
    this.ensure(2);
    this.view.setUint16(this.len, x);
    this.len += 2;
  }
  u32(x) {
    this.ensure(4);
    this.view.setUint32(this.len, x);
    this.len += 4;
  }
  raw(bytes) {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  bytes() {
    return this.buf.slice(0, this.len);
  }
}

function writeValue(w, v, depth) {
  if (depth > MAX_DEPTH) throw new Error("msgpack: nested too deep");
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case "boolean":
      return w.u8(v ? 0xc3 : 0xc2);
    case "number":
      return Number.isInteger(v) && Number.isSafeInteger(v) ? writeInt(w, BigInt(v)) : writeFloat(w, v);
    case "bigint":
      return writeInt(w, v);
    case "string":
      return writeStr(w, v);
    case "object":
      break;
    default:
      throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
  }
  if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
    const b = v instanceof ArrayBuffer ? new Uint8Array(v) : v;
    if (b.length < 0x100) (w.u8(0xc4), w.u8(b.length));
    else if (b.length < 0x10000) (w.u8(0xc5), w.u16(b.length));
    else (w.u8(0xc6), w.u32(b.length));
    return w.raw(b);
  }
  if (Array.isArray(v)) {
    writeLen(w, v.length, 0x90, 0xdc, 0xdd);
    for (const x of v) writeValue(w, x, depth + 1);
    return;
  }
  const entries = Object.entries(v).filter(([, x]) => x !== undefined);
  writeLen(w, entries.length, 0x80, 0xde, 0xdf);
  for (const [k, x] of entries) {
    writeStr(w, k);
    writeValue(w, x, depth + 1);
  }
}

function writeLen(w, n, fix, b16, b32) {
  if (n < 16) w.u8(fix | n);
  else if (n < 0x10000) (w.u8(b16), w.u16(n));
  else (w.u8(b32), w.u32(n));
}

function writeStr(w, s) {
  const b = textEncoder.encode(s);
  if (b.length < 32) w.u8(0xa0 | b.length);
  else if (b.length < 0x100) (w.u8(0xd9), w.u8(b.length));
  else if (b.length < 0x10000) (w.u8(0xda), w.u16(b.length));
  else (w.u8(0xdb), w.u32(b.length));
  w.raw(b);
}

function writeInt(w, n) {
  if (n >= 0n) {
    if (n < 128n) return w.u8(Number(n));
    if (n < 0x100n) return (w.u8(0xcc), w.u8(Number(n)));
    if (n < 0x10000n) return (w.u8(0xcd), w.u16(Number(n)));
    if (n < 0x100000000n) return (w.u8(0xce), w.u32(Number(n)));
    if (n < 1n << 64n) {
      w.u8(0xcf);
      w.ensure(8);
      w.view.setBigUint64(w.len, n);
      w.len += 8;
      return;
    }
  } else {
    if (n >= -32n) return w.u8(Number(n) & 0xff);
    if (n >= -128n) return (w.u8(0xd0), w.u8(Number(n) & 0xff));
    if (n >= -32768n) return (w.u8(0xd1), w.u16(Number(n) & 0xffff));
    if (n >= -2147483648n) return (w.u8(0xd2), w.u32(Number(n) >>> 0));
    if (n >= -(1n << 63n)) {
      w.u8(0xd3);
      w.ensure(8);
      w.view.setBigInt64(w.len, n);
      w.len += 8;
      return;
    }
  }
  throw new RangeError("msgpack: integer out of 64-bit range");
}

function writeFloat(w, x) {
  w.u8(0xcb);
  w.ensure(8);
  w.view.setFloat64(w.len, x);
  w.len += 8;
}

function need(r, n) {
  if (r.i + n > r.b.length) throw new Error("msgpack: truncated");
}

function readValue(r, depth) {
  if (depth > MAX_DEPTH) throw new Error("msgpack: nested too deep");
  need(r, 1);
  const t = r.b[r.i++];
  if (t < 0x80) return t;
  if (t >= 0xe0) return t - 0x100;
  if (t >= 0x80 && t <= 0x8f) return readMap(r, t & 0x0f, depth);
  if (t >= 0x90 && t <= 0x9f) return readArray(r, t & 0x0f, depth);
  if (t >= 0xa0 && t <= 0xbf) return readStr(r, t & 0x1f);
  const v = r.v;
  const at = (n) => {
    need(r, n);
    const i = r.i;
    r.i += n;
    return i;
  };
  switch (t) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return readBin(r, v.getUint8(at(1)));
    case 0xc5:
      return readBin(r, v.getUint16(at(2)));
    case 0xc6:
      return readBin(r, v.getUint32(at(4)));
    case 0xca:
      return v.getFloat32(at(4));
    case 0xcb:
      return v.getFloat64(at(8));
    case 0xcc:
      return v.getUint8(at(1));
    case 0xcd:
      return v.getUint16(at(2));
    case 0xce:
      return v.getUint32(at(4));
    case 0xcf:
      return smallest(v.getBigUint64(at(8)));
    case 0xd0:
      return v.getInt8(at(1));
    case 0xd1:
      return v.getInt16(at(2));
    case 0xd2:
      return v.getInt32(at(4));
    case 0xd3:
      return smallest(v.getBigInt64(at(8)));
    case 0xd9:
      return readStr(r, v.getUint8(at(1)));
    case 0xda:
      return readStr(r, v.getUint16(at(2)));
    case 0xdb:
      return readStr(r, v.getUint32(at(4)));
    case 0xdc:
      return readArray(r, v.getUint16(at(2)), depth);
    case 0xdd:
      return readArray(r, v.getUint32(at(4)), depth);
    case 0xde:
      return readMap(r, v.getUint16(at(2)), depth);
    case 0xdf:
      return readMap(r, v.getUint32(at(4)), depth);
    default:
      throw new Error(`msgpack: unsupported type byte 0x${t.toString(16)}`);
  }
}

function smallest(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

function readStr(r, n) {
  need(r, n);
  const s = textDecoder.decode(r.b.subarray(r.i, r.i + n));
  r.i += n;
  return s;
}

function readBin(r, n) {
  need(r, n);
  const b = r.b.slice(r.i, r.i + n);
  r.i += n;
  return b;
}

function readArray(r, n, depth) {
  if (n > r.b.length - r.i) throw new Error("msgpack: truncated");
  const out = new Array(n);
  for (let k = 0; k < n; k++) out[k] = readValue(r, depth + 1);
  return out;
}

function readMap(r, n, depth) {
  if (2 * n > r.b.length - r.i) throw new Error("msgpack: truncated");
  const out = {};
  for (let k = 0; k < n; k++) {
    const key = readValue(r, depth + 1);
    const value = readValue(r, depth + 1);
    const name = typeof key === "string" ? key : String(key);
    if (name === "__proto__") Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
    else out[name] = value;
  }
  return out;
}
