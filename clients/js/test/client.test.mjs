// Unit tests of the client against a fake server (test/fakes.mjs) and a
// manual clock: requests and answers, events and presence, and the
// reconnect logic (backoff, URL rotation, close codes, the drain hint,
// re-hello with the secret, re-join), none of it with a real sleep.

import test from "node:test";
import assert from "node:assert/strict";

import { SwitchboardClient, SwitchboardError, msgpack } from "../switchboard.js";
import { FakeClock, FakeWebSocket, settle } from "../testing/fakes.mjs";

function makeClient(urls = ["ws://a/ws", "ws://b/ws"], extra = {}) {
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const client = new SwitchboardClient(urls, {
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    onListenerError: (e) => {
      throw e;
    },
    ...extra,
  });
  return { client, clock };
}

/** Connects the client through the fake server; returns the socket. */
async function connected(client, fields = {}) {
  const p = client.connect();
  await settle();
  const ws = FakeWebSocket.last();
  ws.open();
  await settle();
  ws.welcome(fields);
  await p;
  return ws;
}

/** Records events of the given types, in order. */
function record(client, types) {
  const seen = [];
  for (const t of types) client.on(t, (ev) => seen.push([t, ev]));
  return seen;
}

test("connect offers the subprotocol, says hello and resolves with welcome", async () => {
  const { client } = makeClient(["ws://a/ws"], { peerId: "alice", meta: { name: "Alice" } });
  const states = [];
  client.on("state", (e) => states.push(e.state));
  const ws = await connected(client, { node: "node-a" });
  assert.equal(ws.url, "ws://a/ws");
  assert.equal(ws.protocol, "switchboard.v1.json");
  assert.deepEqual(ws.messages(), [{ type: "hello", id: 1, peer_id: "alice", meta: { name: "Alice" }, resumable: true }]);
  assert.equal(client.state, "open");
  assert.equal(client.node, "node-a");
  assert.equal(client.peerId, "alice");
  assert.deepEqual(states, ["connecting", "open"]);
});

test("requests resolve with their answers and reject with the server's error code", async () => {
  const { client } = makeClient(["ws://a/ws"], { peerId: "alice" });
  const ws = await connected(client);

  const join = client.join("call-42", { meta: { role: "host" } });
  await settle();
  const j = ws.lastOf("join");
  assert.deepEqual(j, { type: "join", id: 2, room: "call-42", meta: { role: "host" } });
  ws.deliver({ type: "joined", id: 2, room: "call-42", peers: [{ peer_id: "bob", meta: null }] });
  const joined = await join;
  assert.deepEqual(joined.peers, [{ peer_id: "bob", meta: null }]);
  assert.deepEqual([...client.rooms.get("call-42")], [["bob", null]]);

  const sig = client.signal("bob", "offer", { sdp: "v=0" });
  await settle();
  assert.deepEqual(ws.lastOf("signal"), { type: "signal", id: 3, to: "bob", kind: "offer", data: { sdp: "v=0" } });
  ws.deliver({ type: "ack", id: 3 });
  assert.deepEqual(await sig, { type: "ack", id: 3 });

  const bad = client.signal("carol", "offer", null);
  await settle();
  ws.deliver({ type: "error", id: 4, code: "peer-not-found", message: "peer `carol` is not connected" });
  await assert.rejects(bad, (e) => e instanceof SwitchboardError && e.code === "peer-not-found");

  // Without ack: no id on the wire, resolved once written.
  await client.signal("bob", "candidate", { c: 1 }, { ack: false });
  assert.deepEqual(ws.lastOf("signal"), { type: "signal", to: "bob", kind: "candidate", data: { c: 1 } });
});

test("a request without an answer rejects with timeout when its time runs out", async () => {
  const { client, clock } = makeClient(["ws://a/ws"], { requestTimeoutMs: 5000 });
  await connected(client);
  const p = client.broadcast("r", 1);
  let outcome = null;
  p.then(
    () => (outcome = "resolved"),
    (e) => (outcome = e.code),
  );
  await clock.advance(4999);
  assert.equal(outcome, null);
  await clock.advance(1);
  assert.equal(outcome, "timeout");
});

test("events keep the room's members; events of rooms not joined are dropped", async () => {
  const { client } = makeClient(["ws://a/ws"]);
  const ws = await connected(client);
  const seen = record(client, ["peer-joined", "peer-left", "message", "signal", "room-closed"]);
  const join = client.join("r");
  await settle();
  ws.deliver({ type: "joined", id: 2, room: "r", peers: [] });
  await join;
  ws.deliver({ type: "peer-joined", room: "r", peer_id: "bob", meta: { n: 1 } });
  ws.deliver({ type: "peer-joined", room: "other", peer_id: "eve", meta: null });
  ws.deliver({ type: "message", room: "r", from: "bob", data: "hi" });
  ws.deliver({ type: "message", room: "other", from: "eve", data: "x" });
  ws.deliver({ type: "signal", from: "bob", kind: "offer", data: { sdp: "s" } });
  assert.deepEqual([...client.rooms.get("r")], [["bob", { n: 1 }]]);
  ws.deliver({ type: "peer-left", room: "r", peer_id: "bob", reason: "left" });
  assert.deepEqual([...client.rooms.get("r")], []);
  ws.deliver({ type: "room-closed", room: "r", reason: "deleted" });
  assert.equal(client.rooms.has("r"), false);
  assert.deepEqual(
    seen.map(([t, e]) => [t, e.room ?? e.from]),
    [
      ["peer-joined", "r"],
      ["message", "r"],
      ["signal", "bob"],
      ["peer-left", "r"],
      ["room-closed", "r"],
    ],
  );
});

test("after a lost connection: jittered exponential backoff, URLs in turn, capped", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"], { minDelayMs: 100, maxDelayMs: 1000 });
  const ws = await connected(client);
  const tries = record(client, ["reconnecting"]);
  ws.serverClose(1006);
  await settle();
  assert.equal(client.state, "reconnecting");
  // random() = 0.5: delay = d/2 + d/4 for d = min(1000, 100 * 2^n).
  const expected = [75, 150, 300, 600, 750, 750];
  for (let n = 0; n < expected.length; n++) {
    assert.equal(tries.length, n + 1);
    assert.equal(tries[n][1].delayMs, expected[n]);
    const before = FakeWebSocket.all.length;
    await clock.advance(expected[n] - 1);
    assert.equal(FakeWebSocket.all.length, before, `attempt ${n + 1} must wait its delay`);
    await clock.advance(1);
    assert.equal(FakeWebSocket.all.length, before + 1);
    const attempt = FakeWebSocket.last();
    assert.equal(attempt.url, n % 2 === 0 ? "ws://b/ws" : "ws://a/ws");
    attempt.fail();
    await settle();
  }
  client.close();
});

test("a reconnect says hello with the peer id and secret, joins the rooms again, then sends what waited", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"], { minDelayMs: 100 });
  const ws = await connected(client, { reconnect_secret: "s1" });
  const join = client.join("call");
  await settle();
  ws.deliver({ type: "joined", id: 2, room: "call", peers: [] });
  await join;
  const seen = record(client, ["close", "reconnected"]);
  ws.serverClose(1013, "slow-consumer");
  await settle();
  assert.deepEqual(seen[0], ["close", { code: 1013, reason: "slow-consumer", url: "ws://a/ws", willReconnect: true }]);

  // A signal while reconnecting waits for the new connection.
  const sig = client.signal("bob", "offer", "x");
  await clock.advance(75);
  const ws2 = FakeWebSocket.last();
  assert.equal(ws2.url, "ws://b/ws");
  ws2.open();
  await settle();
  assert.deepEqual(ws2.messages(), [{ type: "hello", id: 3, peer_id: "assigned-1", reconnect_secret: "s1", resumable: true }]);
  ws2.welcome({ reconnect_secret: "s2", node: "node-b" });
  await settle();
  assert.deepEqual(ws2.messages().slice(1), [{ type: "join", id: 4, room: "call" }]);
  assert.equal(client.state, "reconnecting", "requests wait for the re-join");
  ws2.deliver({ type: "joined", id: 4, room: "call", peers: [{ peer_id: "bob", meta: null }] });
  await settle();
  assert.equal(client.state, "open");
  assert.deepEqual(ws2.messages().slice(2), [{ type: "signal", id: 5, to: "bob", kind: "offer", data: "x" }]);
  ws2.deliver({ type: "ack", id: 5 });
  assert.deepEqual(await sig, { type: "ack", id: 5 });
  assert.equal(client.node, "node-b");
  assert.deepEqual(seen[1], ["reconnected", { url: "ws://b/ws", node: "node-b", rooms: ["call"] }]);
  assert.deepEqual([...client.rooms.get("call")], [["bob", null]]);
  // The next reconnect proves itself with the newer secret.
  ws2.serverClose(1006);
  await clock.advance(75);
  const ws3 = FakeWebSocket.last();
  ws3.open();
  await settle();
  assert.equal(ws3.lastOf("hello").reconnect_secret, "s2");
  client.close();
});

test("the drain hint: wait after_ms, take over on the next node, re-join, then drop the old socket", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"]);
  const ws = await connected(client, { reconnect_secret: "s1" });
  const join = client.join("r");
  await settle();
  ws.deliver({ type: "joined", id: 2, room: "r", peers: [] });
  await join;
  const closes = record(client, ["close"]);

  ws.deliver({ type: "reconnect", reason: "draining", after_ms: 437 });
  await clock.advance(436);
  assert.equal(FakeWebSocket.all.length, 1, "no new socket before after_ms");
  // The old socket still serves meanwhile.
  const early = client.signal("bob", "offer", 1);
  await settle();
  assert.deepEqual(ws.lastOf("signal"), { type: "signal", id: 3, to: "bob", kind: "offer", data: 1 });
  ws.deliver({ type: "ack", id: 3 });
  await early;

  await clock.advance(1);
  assert.equal(FakeWebSocket.all.length, 2);
  const ws2 = FakeWebSocket.last();
  assert.equal(ws2.url, "ws://b/ws");
  ws2.open();
  await settle();
  assert.deepEqual(ws2.lastOf("hello"), { type: "hello", id: 4, peer_id: "assigned-1", reconnect_secret: "s1", resumable: true });
  ws2.welcome({ reconnect_secret: "s2", node: "node-b" });
  await settle();
  // The server closes the replaced socket with 4002: not fatal here, and not reported as a close.
  ws.serverClose(4002, "replaced");
  await settle();
  ws2.deliver({ type: "joined", id: 5, room: "r", peers: [] });
  await settle();
  assert.equal(client.state, "open");
  assert.equal(client.node, "node-b");
  assert.deepEqual(closes, []);
  const late = client.signal("bob", "answer", 2);
  await settle();
  assert.deepEqual(ws2.lastOf("signal"), { type: "signal", id: 6, to: "bob", kind: "answer", data: 2 });
  ws2.deliver({ type: "ack", id: 6 });
  await late;
  client.close();
});

test("the drain hint, then 1012 before the new node answers: the handover goes on and succeeds", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"]);
  const ws = await connected(client);
  ws.deliver({ type: "reconnect", reason: "draining", after_ms: 100 });
  await clock.advance(100);
  const ws2 = FakeWebSocket.last();
  ws.serverClose(1012, "draining");
  await settle();
  assert.equal(client.state, "reconnecting");
  assert.equal(FakeWebSocket.all.length, 2, "no second loop");
  ws2.open();
  await settle();
  ws2.welcome();
  await settle();
  assert.equal(client.state, "open");
  assert.equal(client.url, "ws://b/ws");
  client.close();
});

test("1012 without a hint reconnects after a random delay below the drain jitter", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"], { drainJitterMs: 1000 });
  const ws = await connected(client);
  const tries = record(client, ["reconnecting"]);
  ws.serverClose(1012, "draining");
  await settle();
  assert.equal(tries[0][1].delayMs, 500);
  await clock.advance(499);
  assert.equal(FakeWebSocket.all.length, 1);
  await clock.advance(1);
  assert.equal(FakeWebSocket.last().url, "ws://b/ws");
  client.close();
});

for (const [code, reason] of [
  [4001, "unauthorized"],
  [4002, "replaced"],
]) {
  test(`close ${code} (${reason}) does not reconnect`, async () => {
    const { client, clock } = makeClient();
    const ws = await connected(client);
    const seen = record(client, ["close"]);
    ws.serverClose(code, reason);
    await settle();
    assert.deepEqual(seen, [["close", { code, reason, url: "ws://a/ws", willReconnect: false }]]);
    assert.equal(client.state, "closed");
    await clock.advance(60_000);
    assert.equal(FakeWebSocket.all.length, 1);
    await assert.rejects(client.signal("x", "k", 1), (e) => e.code === "closed");
  });
}

test("a refused hello is fatal on the first connect (peer-id-taken) and retried on a reconnect", async () => {
  {
    const { client, clock } = makeClient(["ws://a/ws"], { peerId: "alice" });
    const p = client.connect();
    await settle();
    const ws = FakeWebSocket.last();
    ws.open();
    await settle();
    ws.deliver({ type: "error", id: 1, code: "peer-id-taken", message: "taken" });
    await assert.rejects(p, (e) => e.code === "peer-id-taken");
    assert.equal(client.state, "closed");
    await clock.advance(60_000);
    assert.equal(FakeWebSocket.all.length, 1);
  }
  {
    const { client, clock } = makeClient(["ws://a/ws"], { peerId: "alice", minDelayMs: 100 });
    const ws = await connected(client);
    ws.serverClose(1006);
    await clock.advance(75);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    await settle();
    ws2.deliver({ type: "error", id: 2, code: "peer-id-taken", message: "taken" });
    await settle();
    assert.equal(ws2.closedByClient?.code, 1000);
    await clock.advance(150);
    assert.equal(FakeWebSocket.all.length, 3, "retried after backoff");
    client.close();
  }
});

test("unauthorized hello rejects connect and closes the client", async () => {
  const { client } = makeClient(["ws://a/ws"], { token: async () => "bad" });
  const p = client.connect();
  await settle();
  const ws = FakeWebSocket.last();
  ws.open();
  await settle();
  assert.equal(ws.lastOf("hello").token, "bad");
  ws.deliver({ type: "error", id: 1, code: "unauthorized", message: "token expired" });
  await assert.rejects(p, (e) => e.code === "unauthorized");
  assert.equal(client.state, "closed");
});

test("maxAttempts bounds the first connect", async () => {
  const { client, clock } = makeClient(["ws://a/ws"], { maxAttempts: 3, minDelayMs: 100 });
  const p = client.connect();
  let err = null;
  p.catch((e) => (err = e));
  for (let i = 0; i < 3; i++) {
    await settle();
    FakeWebSocket.last().fail();
    await clock.advance(1000);
  }
  assert.equal(FakeWebSocket.all.length, 3);
  assert.equal(err?.code, "gave-up");
  assert.equal(client.state, "closed");
});

test("MessagePack on the wire: the msgpack subprotocol, binary frames both ways", async () => {
  const { client } = makeClient(["ws://a/ws"], { encoding: "msgpack", peerId: "m" });
  const p = client.connect();
  await settle();
  const ws = FakeWebSocket.last();
  assert.equal(ws.protocol, "switchboard.v1.msgpack");
  assert.equal(ws.binaryType, "arraybuffer");
  ws.open();
  await settle();
  assert.ok(ws.sent[0] instanceof Uint8Array);
  assert.deepEqual(msgpack.decode(ws.sent[0]), { type: "hello", id: 1, peer_id: "m", resumable: true });
  ws.onmessage({
    data: msgpack.encode({ type: "welcome", id: 1, peer_id: "m", node: "n", observed_addr: "x", heartbeat_ms: 1, reconnect_secret: "s" }).buffer,
  });
  await p;
  assert.equal(client.state, "open");
  const got = client.once("signal");
  ws.deliver({ type: "signal", from: "z", kind: "k", data: { bin: new Uint8Array([1, 2]) } }, { binary: true });
  assert.deepEqual((await got).data.bin, new Uint8Array([1, 2]));
});

test("close() stops a pending reconnect and rejects what waits", async () => {
  const { client, clock } = makeClient();
  const ws = await connected(client);
  ws.serverClose(1006);
  await settle();
  const waiting = client.ping();
  client.close();
  await assert.rejects(waiting, (e) => e.code === "closed");
  await clock.advance(60_000);
  assert.equal(FakeWebSocket.all.length, 1);
  assert.equal(client.state, "closed");
});

test("constructor arguments are checked", () => {
  assert.throws(() => new SwitchboardClient([], { WebSocket: FakeWebSocket }), TypeError);
  assert.throws(() => new SwitchboardClient("ws://a", { WebSocket: FakeWebSocket, encoding: "xml" }), TypeError);
  assert.throws(() => new SwitchboardClient("ws://a", { WebSocket: 42 }), TypeError);
});

test("the drain hint: the old socket's 4002 may overtake the new socket's welcome; still no stop", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"]);
  const ws = await connected(client, { reconnect_secret: "s1" });
  const closes = record(client, ["close"]);
  ws.deliver({ type: "reconnect", reason: "draining", after_ms: 10 });
  await clock.advance(10);
  const ws2 = FakeWebSocket.last();
  ws2.open();
  await settle();
  assert.equal(ws2.lastOf("hello").reconnect_secret, "s1");
  ws.serverClose(4002, "replaced");
  await settle();
  assert.deepEqual(closes, [["close", { code: 4002, reason: "replaced", url: "ws://a/ws", willReconnect: true }]]);
  assert.equal(client.state, "reconnecting");
  ws2.welcome({ node: "node-b" });
  await settle();
  assert.equal(client.state, "open");
  assert.equal(client.node, "node-b");
  client.close();
});

test("a room's events handled before join()'s caller resumes are not lost", async () => {
  const { client } = makeClient(["ws://a/ws"]);
  const ws = await connected(client);
  const join = client.join("r");
  await settle();
  // Both frames in one go, as a Node WebSocket may emit them in one tick.
  ws.deliver({ type: "joined", id: 2, room: "r", peers: [] });
  ws.deliver({ type: "peer-joined", room: "r", peer_id: "bob", meta: null });
  await join;
  assert.deepEqual([...client.rooms.get("r").keys()], ["bob"]);
});

test("resume: a lost socket resumes with the token and the last seq; no re-join; what was read is not read twice", async () => {
  const { client, clock } = makeClient(["ws://a/ws", "ws://b/ws"], { minDelayMs: 100 });
  const ws = await connected(client, { reconnect_secret: "s1", resume_token: "tok" });
  const join = client.join("call");
  await settle();
  ws.deliver({ type: "joined", id: 2, room: "call", peers: [] });
  await join;
  const got = record(client, ["signal", "reconnected", "resume-failed"]);
  ws.deliver({ type: "signal", from: "bob", kind: "offer", data: 1, seq: 1 });
  ws.deliver({ type: "signal", from: "bob", kind: "offer", data: 2, seq: 2 });
  ws.serverClose(1006);
  await clock.advance(75);
  const ws2 = FakeWebSocket.last();
  ws2.open();
  await settle();
  assert.deepEqual(ws2.messages(), [
    { type: "hello", id: 3, peer_id: "assigned-1", reconnect_secret: "s1", resumable: true, resume: "tok", last_seq: 2 },
  ]);
  ws2.welcome({ reconnect_secret: "s1", resume_token: "tok", resumed: true, node: "node-b" });
  // The server sends again what the old socket may have lost: the client
  // drops what it read already.
  ws2.deliver({ type: "signal", from: "bob", kind: "offer", data: 2, seq: 2 });
  ws2.deliver({ type: "signal", from: "bob", kind: "offer", data: 3, seq: 3 });
  await settle();
  assert.equal(client.state, "open");
  assert.deepEqual(ws2.messages().slice(1), [], "no re-join: the session is still in its rooms");
  assert.deepEqual(
    got.filter(([t]) => t === "signal").map(([, e]) => e.data),
    [1, 2, 3],
  );
  assert.deepEqual(got.find(([t]) => t === "reconnected")[1], { url: "ws://b/ws", node: "node-b", rooms: ["call"], resumed: true });
  // A refused resume: a fresh session, numbered from 1 again, rooms joined again.
  ws2.serverClose(1006);
  await clock.advance(75);
  const ws3 = FakeWebSocket.last();
  ws3.open();
  await settle();
  assert.equal(ws3.lastOf("hello").last_seq, 3);
  ws3.deliver({ type: "resume-failed", reason: "expired", missed: null });
  ws3.welcome({ reconnect_secret: "s3", resume_token: "tok2" });
  await settle();
  assert.deepEqual(ws3.lastOf("join"), { type: "join", id: 5, room: "call" });
  ws3.deliver({ type: "joined", id: 5, room: "call", peers: [] });
  ws3.deliver({ type: "signal", from: "bob", kind: "offer", data: "fresh", seq: 1 });
  await settle();
  assert.deepEqual(got.find(([t]) => t === "resume-failed")[1], { type: "resume-failed", reason: "expired", missed: null });
  assert.equal(got.filter(([t]) => t === "signal").at(-1)[1].data, "fresh");
  client.close();
});
