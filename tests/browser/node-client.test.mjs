// The JS client under Node (the `ws` package's WebSocket, injected) against
// two real nodes and a real redis-server: a MessagePack client and a JSON
// client in one room on two nodes, requests answered, errors as codes, and
// payloads converted between the encodings as docs/PROTOCOL.md §2 says.

import test from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { SwitchboardClient } from "../../clients/js/switchboard.js";
import { cleanup, startNode, startRedis, uniquePrefix } from "./harness.mjs";

/** An event without its `seq` (the client's sessions are numbered), which must be a number. */
function noSeq({ seq, ...rest }) {
  assert.equal(typeof seq, "number", `numbered: ${JSON.stringify(rest)}`);
  return rest;
}

test("under Node: MessagePack and JSON clients on two nodes talk through the client's API", async (t) => {
  const redis = await startRedis();
  const prefix = uniquePrefix("nodeclient");
  const a = await startNode(redis, { nodeId: "node-a", prefix });
  const b = await startNode(redis, { nodeId: "node-b", prefix });
  const alice = new SwitchboardClient(a.ws, { WebSocket, peerId: "alice", encoding: "msgpack", meta: { n: 1 } });
  const bob = new SwitchboardClient(b.ws, { WebSocket, peerId: "bob" });
  t.after(() => {
    alice.close();
    bob.close();
    cleanup();
  });

  assert.equal((await alice.connect()).node, "node-a");
  assert.equal((await bob.connect()).node, "node-b");
  assert.deepEqual((await alice.join("room")).peers, []);
  const bobSeesAlice = (await bob.join("room")).peers;
  assert.deepEqual(bobSeesAlice, [{ peer_id: "alice", meta: { n: 1 } }]);
  assert.ok((await alice.ping()) >= 0);

  // MessagePack bin reaches a JSON client as an array of byte values.
  const atBob = bob.once("signal");
  assert.deepEqual(await alice.signal("bob", "blob", { bytes: new Uint8Array([1, 2, 3]) }), { type: "ack", id: 4 });
  // Numbered: the client asks for a resumable session (`resume: true`).
  assert.deepEqual(await atBob, { type: "signal", from: "alice", kind: "blob", data: { bytes: [1, 2, 3] }, seq: 1 });

  // A JSON broadcast reaches the MessagePack client, integers intact.
  const atAlice = alice.once("message");
  await bob.broadcast("room", { big: 2 ** 40, s: "é" });
  assert.deepEqual(noSeq(await atAlice), { type: "message", room: "room", from: "bob", data: { big: 2 ** 40, s: "é" } });

  await assert.rejects(alice.signal("nobody", "offer", null), (e) => e.code === "peer-not-found");
  await assert.rejects(bob.broadcast("elsewhere", 1), (e) => e.code === "not-in-room");
  await assert.rejects(bob.join(""), (e) => e.code === "invalid-room");

  // Leaving: the other side hears `peer-left`, and its member list follows.
  const left = alice.once("peer-left");
  await bob.leave("room");
  assert.deepEqual(noSeq(await left), { type: "peer-left", room: "room", peer_id: "bob", reason: "left" });
  assert.deepEqual([...alice.rooms.get("room").keys()], []);
  assert.equal(bob.rooms.has("room"), false);
});
