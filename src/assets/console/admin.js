// The operator console's cluster page (docs/ADMIN.md). Every value that
// comes from the server (worker ids, addresses, log text) is put into the
// page with textContent, never as HTML.
const $ = (id) => document.getElementById(id);
const PAGE = 50;
const LOG_MAX = 500;
let ws = null;
let query = { search: "", offset: 0, limit: PAGE };
let total = 0;
let nodes = [];
let workerCount = null;
const pairings = new Map();
let nextId = 1;
// Peer and room lists: pages fetched on request (server-side cursors).
let peersQuery = { node: null, search: "", cursor: 0 };
let peersNext = 0;
let roomsQuery = { search: "", after: null };
let roomsNext = null;
let backoff = 500;

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function uptime(s) {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function renderNodes() {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of nodes) {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    cell(tr, n.id);
    cell(tr, n.addr);
    cell(tr, uptime(n.uptime_s));
    cell(tr, n.connections);
    cell(tr, n.signals_per_s);
    cell(tr, n.rooms);
    cell(tr, n.state, `state-${n.state}`);
    body.appendChild(tr);
  }
  $("count-nodes").textContent = String(nodes.length);
  $("count-peers").textContent = String(nodes.reduce((a, n) => a + n.connections, 0));
  $("count-rooms").textContent = String(nodes.reduce((a, n) => a + n.rooms, 0));
}

function renderWorkers(page) {
  total = page.total;
  if (page.count != null) workerCount = page.count;
  if (workerCount != null) $("count-workers").textContent = String(workerCount);
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const w of page.items) {
    const tr = document.createElement("tr");
    tr.dataset.worker = w.id;
    cell(tr, w.id, "worker-id");
    cell(tr, w.node);
    cell(tr, w.observed_addr);
    cell(tr, w.stun, "stun");
    cell(tr, w.state, "state");
    cell(tr, w.paired_with, "paired-with");
    cell(tr, ago(w.since));
    const td = document.createElement("td");
    if (w.state === "paired" || w.state === "queued") {
      const b = document.createElement("button");
      b.textContent = "Unpair";
      b.className = "unpair";
      b.addEventListener("click", () => send({ type: "unpair", worker: w.id }));
      td.appendChild(b);
    } else {
      const b = document.createElement("button");
      b.textContent = "Pick";
      b.title = "use in the pair form";
      b.addEventListener("click", () => {
        if (!$("pair-a").value) $("pair-a").value = w.id;
        else $("pair-b").value = w.id;
      });
      td.appendChild(b);
    }
    const chat = document.createElement("a");
    chat.textContent = " chat";
    chat.href = "/admin/chat#" + encodeURIComponent(w.id);
    td.appendChild(chat);
    tr.appendChild(td);
    body.appendChild(tr);
  }
  const from = total === 0 ? 0 : page.offset + 1;
  const to = Math.min(total, page.offset + page.items.length);
  $("pageinfo").textContent = `${from}–${to} of ${total}`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = page.offset + page.items.length >= total;
}

function renderPeerNodes() {
  const sel = $("peers-node");
  const ids = nodes.map((n) => n.id);
  if (ids.join("\n") === [...sel.options].map((o) => o.value).join("\n")) return;
  const keep = sel.value;
  sel.replaceChildren();
  for (const id of ids) {
    const o = document.createElement("option");
    o.value = id;
    o.textContent = id;
    sel.appendChild(o);
  }
  if (ids.includes(keep)) sel.value = keep;
  if (peersQuery.node == null && ids.length) askPeers(0);
}

function askPeers(cursor) {
  peersQuery = { node: $("peers-node").value, search: $("peers-search").value, cursor };
  if (peersQuery.node) send({ type: "peers", ...peersQuery, limit: PAGE });
}

function renderPeers(m) {
  peersNext = m.next;
  const list = $("peers");
  list.replaceChildren();
  for (const id of m.items) {
    const li = document.createElement("li");
    li.textContent = id;
    list.appendChild(li);
  }
  $("peers-next").disabled = m.next === 0;
}

function askRooms(after) {
  roomsQuery = { search: $("rooms-search").value, after };
  send({ type: "rooms", ...roomsQuery, limit: PAGE });
}

function renderRooms(m) {
  roomsNext = m.next;
  const body = $("rooms").tBodies[0];
  body.replaceChildren();
  for (const r of m.items) {
    const tr = document.createElement("tr");
    cell(tr, r.room);
    cell(tr, r.members);
    cell(tr, r.explicit ? "created" : "by join");
    cell(tr, r.expires_at ? new Date(r.expires_at).toISOString() : null);
    body.appendChild(tr);
  }
  $("rooms-next").disabled = m.next == null;
}

function renderPairings() {
  const ul = $("pairings");
  ul.replaceChildren();
  for (const [id, p] of pairings) {
    const li = document.createElement("li");
    li.textContent = `${p.a} ⇄ ${p.b}`;
    li.title = id;
    ul.appendChild(li);
  }
}

function logLine(e) {
  const li = document.createElement("li");
  li.className = `log-${e.kind}`;
  const t = new Date(e.ts).toISOString().slice(11, 23);
  let text = `${t} [${e.node}] ${e.kind}`;
  if (e.peer) text += ` ${e.peer}`;
  if (e.other) text += ` ⇄ ${e.other}`;
  if (e.detail) text += ` — ${e.detail}`;
  li.textContent = text;
  return li;
}

function addEvents(events) {
  const log = $("log");
  for (const e of events) {
    log.appendChild(logLine(e));
    if (e.kind === "pairing" && e.pairing) pairings.set(e.pairing, { a: e.peer, b: e.other });
    if (e.kind === "unpairing" && e.pairing) pairings.delete(e.pairing);
  }
  while (log.children.length > LOG_MAX) log.removeChild(log.firstChild);
  log.scrollTop = log.scrollHeight;
  if (events.some((e) => e.kind.startsWith("pair") || e.kind === "unpairing")) renderPairings();
}

function result(text, bad) {
  const r = $("op-result");
  r.textContent = text;
  r.className = bad ? "result bad" : "result";
}

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return result("not connected", true);
  msg.id = nextId++;
  ws.send(JSON.stringify(msg));
}

function onMessage(ev) {
  let m;
  try { m = JSON.parse(ev.data); } catch { return; }
  switch (m.type) {
    case "snapshot":
      nodes = m.nodes;
      renderNodes();
      renderPeerNodes();
      askRooms(null);
      if (m.counts.workers != null) workerCount = m.counts.workers;
      renderWorkers({ ...m.workers, count: m.counts.workers });
      pairings.clear();
      for (const p of m.pairings) pairings.set(p.pairing_id, { a: p.a, b: p.b });
      renderPairings();
      $("log").replaceChildren();
      addEvents(m.log);
      if (query.search || query.offset) send({ type: "query", ...query });
      break;
    case "delta":
      if (m.nodes) { nodes = m.nodes; renderNodes(); renderPeerNodes(); }
      if (m.events.length) addEvents(m.events);
      break;
    case "workers":
      if (m.search === query.search && m.offset === query.offset) renderWorkers(m);
      break;
    case "peers":
      if (m.node === peersQuery.node && m.search === peersQuery.search && m.cursor === peersQuery.cursor) renderPeers(m);
      break;
    case "rooms":
      if (m.search === roomsQuery.search) renderRooms(m);
      break;
    case "result":
      result(m.op === "pair" ? `paired (${m.pairing_id})` : `unpaired ${m.worker}`, false);
      break;
    case "error":
      result(`${m.code}: ${m.message}`, true);
      break;
  }
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/admin`;
  ws = new WebSocket(url);
  ws.addEventListener("open", () => {
    backoff = 500;
    $("status").textContent = "live";
    $("status").className = "status ok";
  });
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", () => {
    $("status").textContent = "disconnected; reconnecting…";
    $("status").className = "status bad";
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  });
}

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    query = { search: $("search").value, offset: 0, limit: PAGE };
    send({ type: "query", ...query });
  }, 200);
});
$("prev").addEventListener("click", () => {
  query.offset = Math.max(0, query.offset - PAGE);
  send({ type: "query", ...query });
});
$("next").addEventListener("click", () => {
  if (query.offset + PAGE < total) query.offset += PAGE;
  send({ type: "query", ...query });
});
$("peers-node").addEventListener("change", () => askPeers(0));
$("peers-first").addEventListener("click", () => askPeers(0));
$("peers-next").addEventListener("click", () => { if (peersNext) askPeers(peersNext); });
let peersTimer = null;
$("peers-search").addEventListener("input", () => {
  clearTimeout(peersTimer);
  peersTimer = setTimeout(() => askPeers(0), 200);
});
$("rooms-first").addEventListener("click", () => askRooms(null));
$("rooms-next").addEventListener("click", () => { if (roomsNext != null) askRooms(roomsNext); });
let roomsTimer = null;
$("rooms-search").addEventListener("input", () => {
  clearTimeout(roomsTimer);
  roomsTimer = setTimeout(() => askRooms(null), 200);
});
$("pair").addEventListener("click", () => {
  send({ type: "pair", a: $("pair-a").value.trim(), b: $("pair-b").value.trim() });
});
connect();
