// The JS client (clients/js/switchboard.js, as the node serves it at
// /demo/switchboard.js) in real headless Chromium against two real nodes
// and a real redis-server: alice's client is given both nodes' URLs and
// sits on node A; bob sits on node B. While alice signals bob without
// pause, node A is sent SIGTERM: alice's client gets the `reconnect` hint,
// takes its peer id over on node B with its reconnect secret, joins its
// room again, and goes on signaling, all by itself.

import test from "node:test";
import assert from "node:assert/strict";

import { cleanup, launchChromium, startNode, startRedis, terminate, uniquePrefix, waitFor } from "./harness.mjs";

/** Opens a page on `node` and starts a client in it (the module served by that node). */
async function clientPage(browser, node, { urls, peerId, encoding = "json" }) {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${node.http}/demo`);
  const welcome = await page.evaluate(
    async ({ urls, peerId, encoding }) => {
      const { SwitchboardClient } = await import("/demo/switchboard.js");
      const c = new SwitchboardClient(urls, { peerId, encoding, minDelayMs: 100, maxDelayMs: 1000 });
      window.sb = { c, events: [], got: [] };
      for (const type of ["reconnect", "reconnecting", "reconnected", "close", "rejoin-failed", "state"]) {
        c.on(type, (ev) => window.sb.events.push([type, ev]));
      }
      c.on("signal", (m) => window.sb.got.push([m.from, m.kind, m.data]));
      const w = await c.connect();
      await c.join("lobby");
      return w;
    },
    { urls, peerId, encoding },
  );
  return { page, welcome, errors };
}

test("the client reconnects to the other node by itself after SIGTERM and keeps signaling", async (t) => {
  const redis = await startRedis();
  const prefix = uniquePrefix("client");
  // A short grace period keeps the test quick; the hint's jitter stays the default (below 1 s).
  const a = await startNode(redis, { nodeId: "node-a", prefix, env: { SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS: "3000" } });
  const b = await startNode(redis, { nodeId: "node-b", prefix });
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    cleanup();
  });

  const alice = await clientPage(browser, a, { urls: [a.ws, b.ws], peerId: "alice" });
  const bob = await clientPage(browser, b, { urls: [b.ws], peerId: "bob", encoding: "msgpack" });
  assert.equal(alice.welcome.node, "node-a");
  assert.equal(bob.welcome.node, "node-b");
  await waitFor("alice to see bob in the lobby", () => alice.page.evaluate(() => window.sb.c.rooms.get("lobby").has("bob")));

  // Alice signals bob every 50 ms, each with an ack, and records every outcome.
  await alice.page.evaluate(() => {
    window.sb.outcomes = [];
    window.sb.seq = 0;
    window.sb.loop = (async () => {
      while (!window.sb.stop) {
        const n = ++window.sb.seq;
        try {
          await window.sb.c.signal("bob", "seq", n);
          window.sb.outcomes.push([n, "ack", window.sb.c.node]);
        } catch (e) {
          window.sb.outcomes.push([n, e.code, window.sb.c.node]);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
  });
  await alice.page.waitForFunction(() => window.sb.outcomes.length >= 5, null, { timeout: 20000 });

  const exited = terminate(a);
  await alice.page.waitForFunction(() => window.sb.events.some(([t]) => t === "reconnected"), null, { timeout: 20000 });
  const exit = await exited;
  assert.equal(exit.code, 0, `node A's exit after SIGTERM: ${JSON.stringify(exit)}`);

  // Signals acked on node B after the reconnect, then stop.
  await alice.page.waitForFunction(() => window.sb.outcomes.filter(([, o, node]) => o === "ack" && node === "node-b").length >= 10, null, {
    timeout: 20000,
  });
  await alice.page.evaluate(() => {
    window.sb.stop = true;
    return window.sb.loop;
  });

  const { events, outcomes, node, url, rooms } = await alice.page.evaluate(() => ({
    events: window.sb.events,
    outcomes: window.sb.outcomes,
    node: window.sb.c.node,
    url: window.sb.c.url,
    rooms: [...window.sb.c.rooms].map(([r, peers]) => [r, [...peers.keys()]]),
  }));
  assert.equal(node, "node-b");
  assert.equal(url, b.ws);
  assert.deepEqual(rooms, [["lobby", ["bob"]]]);
  const types = events.map(([t]) => t);
  assert.ok(types.includes("reconnect"), `alice got the drain hint: ${JSON.stringify(types)}`);
  assert.equal(types.filter((t) => t === "reconnected").length, 1);
  assert.deepEqual(
    events.find(([t]) => t === "reconnected")[1],
    // Resumed: the session (its peer id and room) moved with no re-join.
    { url: b.ws, node: "node-b", rooms: ["lobby"], resumed: true },
  );
  assert.ok(!types.includes("rejoin-failed"));
  // The handover was made before the old socket closed: no close reported to the application.
  assert.ok(!events.some(([t, ev]) => t === "close" && !ev.willReconnect), JSON.stringify(events));

  // Every signal was acked, or (at most the one in flight at the takeover) lost with the old socket.
  const failed = outcomes.filter(([, o]) => o !== "ack");
  assert.ok(failed.every(([, o]) => o === "connection-lost"), JSON.stringify(failed));
  assert.ok(failed.length <= 1, JSON.stringify(failed));
  const acked = outcomes.filter(([, o]) => o === "ack").map(([n]) => n);

  // Bob got every acked signal exactly once, in order, from alice.
  await bob.page.waitForFunction((last) => window.sb.got.some(([, , d]) => d === last), acked.at(-1), { timeout: 10000 });
  const got = await bob.page.evaluate(() => window.sb.got);
  assert.ok(got.every(([from, kind]) => from === "alice" && kind === "seq"));
  const seqs = got.map(([, , d]) => d);
  assert.deepEqual(seqs.filter((n) => acked.includes(n)), acked);
  assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, "in order");
  assert.equal(new Set(seqs).size, seqs.length, "exactly once");

  // And the other way: bob's signal reaches alice's new connection.
  await bob.page.evaluate(() => window.sb.c.signal("alice", "reply", "after the move"));
  await alice.page.waitForFunction(() => window.sb.got.some(([f, k]) => f === "bob" && k === "reply"), null, { timeout: 10000 });
  // Bob's room still lists alice once the replacement has settled.
  await waitFor("bob to list alice in the lobby", () => bob.page.evaluate(() => window.sb.c.rooms.get("lobby").has("alice")));
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
});
