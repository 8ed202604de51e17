// Test doubles for the client's unit tests: a WebSocket whose server side
// the test plays by hand, and a manual clock, so backoff and close-code logic
// run without real sleeps.

import { msgpack } from "../switchboard.js";

/** A manual clock: timers run only when the test advances time. */
export class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map(); // handle -> {at, fn}
    this.nextHandle = 1;
    this.setTimeout = (fn, ms) => {
      const h = this.nextHandle++;
      this.timers.set(h, { at: this.now + Math.max(0, ms), fn, ms });
      return h;
    };
    this.clearTimeout = (h) => this.timers.delete(h);
  }

  /** The delays of the timers now pending, in order of expiry. */
  pending() {
    return [...this.timers.values()].sort((a, b) => a.at - b.at).map((t) => t.at - this.now);
  }

  /** Moves time forward by `ms`, running each timer that comes due (and the promise jobs it starts). */
  async advance(ms) {
    const target = this.now + ms;
    for (let guard = 0; guard < 10000; guard++) {
      await settle();
      let next = null;
      for (const [h, t] of this.timers) if (t.at <= target && (next === null || t.at < next[1].at)) next = [h, t];
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = target;
    await settle();
  }
}

/** Lets every queued promise job (and the ones they queue) run. */
export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** A fake WebSocket; every instance is recorded in `FakeWebSocket.all`. */
export class FakeWebSocket {
  static all = [];
  static reset() {
    FakeWebSocket.all = [];
  }
  static last() {
    return FakeWebSocket.all[FakeWebSocket.all.length - 1];
  }

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    this.binaryType = "blob";
    this.closedByClient = null;
    FakeWebSocket.all.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.closedByClient = { code, reason };
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  // ----- the server's side, played by the test -----

  /** The client's messages, decoded. */
  messages() {
    return this.sent.map((d) => (typeof d === "string" ? JSON.parse(d) : msgpack.decode(d)));
  }

  /** The last client message of `type`. */
  lastOf(type) {
    return this.messages().filter((m) => m.type === type).at(-1);
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  deliver(msg, { binary = false } = {}) {
    this.onmessage?.({ data: binary ? msgpack.encode(msg).buffer : JSON.stringify(msg) });
  }

  /** The server closes the connection with `code`. */
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The connection fails before it opens (a refused upgrade: 1006). */
  fail() {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }

  /** Answers the client's `hello` with a `welcome`. */
  welcome(fields = {}) {
    const hello = this.lastOf("hello");
    if (!hello) throw new Error("no hello to answer");
    this.deliver({
      type: "welcome",
      id: hello.id,
      peer_id: hello.peer_id ?? "assigned-1",
      node: fields.node ?? "node-x",
      observed_addr: "127.0.0.1:5000",
      heartbeat_ms: 15000,
      reconnect_secret: fields.reconnect_secret ?? "secret-1",
      ...fields,
    });
  }
}
