// The /demo page in real headless Chromium against two real nodes clustered
// through a real redis-server: a tab on node A and a tab on node B join one
// room, their RTCPeerConnection reaches "connected" through signaling that
// crosses the nodes, the test-pattern video arrives, and a data-channel
// message goes each way. Tab B speaks MessagePack, tab A JSON.

import test from "node:test";
import assert from "node:assert/strict";

import { readFileSync } from "node:fs";
import path from "node:path";

import { REPO, cleanup, launchChromium, startNode, startRedis, uniquePrefix } from "./harness.mjs";

test("two demo tabs on two nodes connect over WebRTC and exchange data-channel messages", async (t) => {
  const redis = await startRedis();
  const prefix = uniquePrefix("demo");
  const a = await startNode(redis, { nodeId: "node-a", prefix });
  const b = await startNode(redis, { nodeId: "node-b", prefix });
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    cleanup();
  });

  // The assets as served: the client module is the one in clients/js, byte for byte.
  const mod = await fetch(`${a.http}/demo/switchboard.js`);
  assert.equal(mod.status, 200);
  assert.equal(mod.headers.get("content-type"), "text/javascript; charset=utf-8");
  assert.equal(mod.headers.get("access-control-allow-origin"), "*");
  assert.equal(mod.headers.get("x-content-type-options"), "nosniff");
  assert.equal(await mod.text(), readFileSync(path.join(REPO, "clients/js/switchboard.js"), "utf8"));
  const missing = await fetch(`${a.http}/demo/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "not-found");

  const pageErrors = [];
  const open = async (node, query) => {
    const page = await browser.newPage();
    page.on("pageerror", (e) => pageErrors.push(`${node.id}: ${e.message}`));
    const res = await page.goto(`${node.http}/demo?${query}`);
    assert.equal(res.status(), 200);
    assert.match(res.headers()["content-security-policy"], /script-src 'self'/);
    return page;
  };

  const alice = await open(a, "room=call-1&peer=alice&autojoin=1");
  await alice.waitForFunction(() => window.demo?.joined !== null && window.demo?.joined !== undefined, null, { timeout: 20000 });
  assert.equal(await alice.textContent("#node"), "node-a");
  assert.deepEqual(await alice.evaluate(() => window.demo.joined.peers), []);

  const bob = await open(b, "room=call-1&peer=bob&autojoin=1&encoding=msgpack");
  await bob.waitForFunction(() => window.demo?.joined, null, { timeout: 20000 });
  assert.equal(await bob.textContent("#node"), "node-b");
  assert.deepEqual(await bob.evaluate(() => window.demo.joined.peers.map((p) => p.peer_id)), ["alice"]);

  for (const page of [alice, bob]) {
    await page.waitForFunction(() => window.demo.pcState === "connected", null, { timeout: 30000 });
    await page.waitForFunction(() => document.querySelector("#dc-state").textContent === "open", null, { timeout: 30000 });
  }
  assert.equal(await alice.textContent("#remote-peer"), "bob");
  assert.equal(await bob.textContent("#remote-peer"), "alice");

  // The test-pattern track arrives as decoded video frames.
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelector("#remote").videoWidth === 320, null, { timeout: 30000 });
  }

  await alice.evaluate(() => window.demo.send("hello from alice on node-a"));
  await bob.waitForFunction(() => window.demo.received.length > 0, null, { timeout: 10000 });
  assert.deepEqual(await bob.evaluate(() => window.demo.received), ["hello from alice on node-a"]);
  await bob.evaluate(() => window.demo.send("hello from bob on node-b"));
  await alice.waitForFunction(() => window.demo.received.length > 0, null, { timeout: 10000 });
  assert.deepEqual(await alice.evaluate(() => window.demo.received), ["hello from bob on node-b"]);

  // The signaling log shows the exchange as it passed: bob (the newcomer) offered, alice answered.
  const aliceLog = await alice.$$eval("#sig-log li", (lis) => lis.map((li) => li.textContent));
  const bobLog = await bob.$$eval("#sig-log li", (lis) => lis.map((li) => li.textContent));
  assert.ok(aliceLog.some((l) => l.startsWith("← ") && l.includes('"type":"signal"') && l.includes('"kind":"offer"') && l.includes('"from":"bob"')));
  assert.ok(aliceLog.some((l) => l.startsWith("→ ") && l.includes('"kind":"answer"') && l.includes('"to":"bob"')));
  assert.ok(bobLog.some((l) => l.startsWith("→ ") && l.includes('"kind":"offer"')));
  assert.ok(bobLog.some((l) => l.startsWith("← ") && l.includes('"kind":"candidate"')));
  assert.deepEqual(pageErrors, []);
});
