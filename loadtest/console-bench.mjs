// The operator console at scale (loadtest/console-bench.sh runs it): opens
// WORKERS legacy workers (the older rendezvous service's door,
// /ws/register/{id}) spread over the nodes, then, as an admin on the first
// node, times what the console does: the snapshot after connecting, a
// worker search, a page of another node's peers, a page of rooms; and
// counts the bytes of the snapshot (only one page is ever sent).
//
//   node loadtest/console-bench.mjs TOKEN WORKERS ADDR1,ADDR2,ADDR3 [SYNC_DIR]
//
// With SYNC_DIR it writes SYNC_DIR/workers-open once the workers are
// connected and waits for SYNC_DIR/go (the script measures the nodes' CPU
// without a console meanwhile); after its measurements it writes
// SYNC_DIR/holding and keeps the admin socket open until SYNC_DIR/done.
// Prints one JSON object. Needs the `ws` package (tests/browser/node_modules).
import { createRequire } from "node:module";
const require = createRequire(new URL("../tests/browser/package.json", import.meta.url));
const WebSocket = require("ws");

const [token, workersArg, addrsArg, sync] = process.argv.slice(2);
// One process may hold only so many sockets (the open-file limit): with
// HOLD_FROM and HOLD_COUNT set, this process only opens workers
// HOLD_FROM.. (HOLD_COUNT of them) and holds them until SYNC_DIR/done,
// while the measuring process opens the first ones.
const holdFrom = process.env.HOLD_FROM ? Number(process.env.HOLD_FROM) : null;
const holdCount = Number(process.env.HOLD_COUNT ?? 0);
const ownFrom = holdFrom ?? 0;
const ownCount = holdFrom != null ? holdCount : Number(process.env.OWN_COUNT ?? workersArg);
import { existsSync, writeFileSync } from "node:fs";
async function handshake(mark, waitFor) {
  if (!sync) return;
  writeFileSync(`${sync}/${mark}`, "");
  for (let i = 0; i < 600 && !existsSync(`${sync}/${waitFor}`); i++) await sleep(100);
}
const WORKERS = Number(workersArg);
const addrs = addrsArg.split(",");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function open(url, headers) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false });
    const t = setTimeout(() => reject(new Error(`timeout opening ${url}`)), 30000);
    ws.once("open", () => { clearTimeout(t); resolve(ws); });
    ws.once("error", (e) => { clearTimeout(t); reject(e); });
  });
}

// Workers, 200 at a time.
const workers = [];
const t0 = Date.now();
for (let i = ownFrom; i < ownFrom + ownCount; i += 200) {
  const batch = [];
  for (let j = i; j < Math.min(i + 200, ownFrom + ownCount); j++) {
    const ws = open(`ws://${addrs[j % addrs.length]}/ws/register/w-${String(j).padStart(6, "0")}`);
    batch.push(ws.then((w) => { w.on("message", () => {}); w.on("error", () => {}); return w; }));
  }
  workers.push(...(await Promise.all(batch)));
}
const openSecs = (Date.now() - t0) / 1000;
if (holdFrom != null) {
  await handshake(`held-${holdFrom}`, "done");
  process.exit(0);
}
await handshake("workers-open", "go");

// The admin socket on the first node.
const auth = { authorization: `Bearer ${token}` };
const pending = [];
let admin;
const frames = [];
function next(type, id) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${type} within 30 s`)), 30000);
    pending.push({ type, id, resolve: (m) => { clearTimeout(t); resolve(m); } });
  });
}
const tConnect = Date.now();
admin = await open(`ws://${addrs[0]}/ws/admin`, auth);
admin.on("message", (data) => {
  const text = data.toString();
  let m;
  try { m = JSON.parse(text); } catch { return; }
  frames.push(text.length);
  const i = pending.findIndex((p) => p.type === m.type && (p.id === undefined || p.id === m.id));
  if (i >= 0) { const p = pending.splice(i, 1)[0]; p.resolve({ m, bytes: text.length }); }
});
// Snapshot: wait until it counts every worker (the list is read once a second).
let snap = await next("snapshot");
const snapshotMs = Date.now() - tConnect;
const timed = async (msg) => {
  const t = Date.now();
  admin.send(JSON.stringify(msg));
  const r = await next(msg.type === "query" ? "workers" : msg.type, msg.id);
  return { ms: Date.now() - t, ...r };
};
let count = snap.m.counts.workers;
for (let k = 0; k < 60 && count < WORKERS; k++) {
  await sleep(1000);
  count = (await timed({ type: "query", id: `c${k}`, search: "" })).m.count;
}
const search = await timed({ type: "query", id: "s", search: "w-0123" });
const lastPage = await timed({ type: "query", id: "p", search: "", offset: WORKERS - 50, limit: 50 });
const nodeId = snap.m.nodes.map((n) => n.id).sort()[1] ?? snap.m.nodes[0].id;
const peers = await timed({ type: "peers", id: "x", node: nodeId, limit: 50 });
const rooms = await timed({ type: "rooms", id: "r", limit: 50 });
console.log(JSON.stringify({
  workers: WORKERS, workers_open_secs: openSecs, workers_counted: count,
  snapshot_ms: snapshotMs, snapshot_bytes: snap.bytes,
  search_ms: search.ms, search_total: search.m.total,
  last_page_ms: lastPage.ms, last_page_items: lastPage.m.items.length,
  peers_page_ms: peers.ms, peers_page_items: peers.m.items.length,
  rooms_page_ms: rooms.ms, rooms_page_items: rooms.m.items.length,
  nodes: snap.m.nodes.length, peers_counted: snap.m.counts.peers,
}));
await handshake("holding", "done");
admin.close();
for (const w of workers) w.terminate();
process.exit(0);
