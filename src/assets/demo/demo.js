// The /demo page: two tabs join a room through the broker and open a WebRTC
// connection to each other (a data channel and a test-pattern video track
// from a canvas), listing every signaling message as it passes. The
// newcomer makes the offer to each member its `joined` lists (the
// convention of docs/PROTOCOL.md §13); ICE candidates trickle as signals of
// kind `candidate`. No STUN or TURN server: on one machine or a LAN, host
// candidates connect. Everything a peer sends is shown with textContent,
// never parsed as HTML.

import { SwitchboardClient } from "/demo/switchboard.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ownNode = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

$("room").value = params.get("room") ?? "demo";
$("peer").value = params.get("peer") ?? `tab-${Math.random().toString(16).slice(2, 8)}`;
$("encoding").value = params.get("encoding") === "msgpack" ? "msgpack" : "json";
$("nodes").value = params.get("nodes") ?? ownNode;

/** The page's state, also reachable as `window.demo` (for the browser tests and the console). */
const demo = {
  client: null,
  room: null,
  pcs: new Map(), // remote peer id -> RTCPeerConnection
  iceServers: [], // welcome.ice_servers of the last welcome ([turn] on the node)
  channel: null,
  joined: null, // the `joined` answer, once in the room
  received: [], // data-channel messages received, in order
  queue: Promise.resolve(), // signals are handled one at a time, in order
  get pcState() {
    return $("pc-state").textContent;
  },
  send(text) {
    if (!demo.channel || demo.channel.readyState !== "open") throw new Error("the data channel is not open");
    demo.channel.send(text);
    addLine($("dc-log"), "out", `me: ${text}`);
  },
};
window.demo = demo;

// ----- logs ---------------------------------------------------------------

function addLine(list, kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  list.append(li);
  while (list.children.length > 500) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

/** A message as one line, with SDP shortened. */
function summarize(msg) {
  return JSON.stringify(msg, (key, value) => {
    if (key === "sdp" && typeof value === "string" && value.length > 80) {
      return `${value.slice(0, 60).replace(/\r\n/g, "⏎")}… (${value.length} bytes)`;
    }
    return value;
  });
}

function trace(dir, msg, url) {
  addLine($("sig-log"), dir, `${dir === "out" ? "→" : "←"} ${summarize(msg)}  [${new URL(url).host}]`);
}

function note(text) {
  addLine($("sig-log"), "note", `· ${text}`);
}

// ----- the local test pattern -------------------------------------------------

const canvas = $("local");
const ctx = canvas.getContext("2d");
const bars = ["#c0c0c0", "#c0c000", "#00c0c0", "#00c000", "#c000c0", "#c00000", "#0000c0"];
let frame = 0;
function draw() {
  const w = canvas.width;
  const h = canvas.height;
  bars.forEach((c, i) => {
    ctx.fillStyle = c;
    ctx.fillRect((i * w) / bars.length, 0, w / bars.length + 1, h * 0.7);
  });
  ctx.fillStyle = "#111";
  ctx.fillRect(0, h * 0.7, w, h * 0.3);
  const x = (frame * 4) % (w - 30);
  ctx.fillStyle = "#fff";
  ctx.fillRect(x, h * 0.75, 30, 30);
  ctx.font = "14px monospace";
  ctx.fillText(`${$("peer").value.slice(0, 24)}  #${frame}`, 8, h - 8);
  frame++;
}
draw();
setInterval(draw, 66);
const localStream = canvas.captureStream(15);

// ----- WebRTC -----------------------------------------------------------------

function setPcState(pc) {
  $("pc-state").textContent = pc.connectionState;
}

function makePc(peer) {
  demo.pcs.get(peer)?.close();
  // The node's STUN and TURN servers when its operator configured [turn]
  // (welcome.ice_servers has RTCIceServer's shape); none on one machine.
  const pc = new RTCPeerConnection({ iceServers: demo.iceServers });
  pc.pendingCandidates = [];
  demo.pcs.set(peer, pc);
  $("remote-peer").textContent = peer;
  for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
  pc.onicecandidate = (e) => {
    if (e.candidate) demo.client?.signal(peer, "candidate", e.candidate.toJSON()).catch((err) => note(`candidate to ${peer}: ${err.code}`));
  };
  pc.onconnectionstatechange = () => {
    if (demo.pcs.get(peer) === pc) setPcState(pc);
  };
  pc.ontrack = (e) => {
    $("remote").srcObject = e.streams[0] ?? new MediaStream([e.track]);
  };
  pc.ondatachannel = (e) => useChannel(e.channel, peer);
  setPcState(pc);
  return pc;
}

function useChannel(ch, peer) {
  demo.channel = ch;
  $("dc-state").textContent = ch.readyState;
  ch.onopen = () => {
    $("dc-state").textContent = "open";
    $("dc-send").disabled = false;
  };
  ch.onclose = () => {
    $("dc-state").textContent = "closed";
    $("dc-send").disabled = true;
  };
  ch.onmessage = (e) => {
    const text = typeof e.data === "string" ? e.data : `(${e.data.byteLength ?? e.data.size} bytes)`;
    demo.received.push(text);
    addLine($("dc-log"), "in", `${peer}: ${text}`);
  };
}

async function call(peer) {
  const pc = makePc(peer);
  useChannel(pc.createDataChannel("chat"), peer);
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await demo.client.signal(peer, "offer", { type: offer.type, sdp: offer.sdp });
}

async function flushCandidates(pc) {
  for (const c of pc.pendingCandidates.splice(0)) await pc.addIceCandidate(c);
}

async function onSignal(m) {
  switch (m.kind) {
    case "offer": {
      const pc = makePc(m.from);
      await pc.setRemoteDescription(m.data);
      await flushCandidates(pc);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await demo.client.signal(m.from, "answer", { type: answer.type, sdp: answer.sdp });
      break;
    }
    case "answer": {
      const pc = demo.pcs.get(m.from);
      if (!pc) return;
      await pc.setRemoteDescription(m.data);
      await flushCandidates(pc);
      break;
    }
    case "candidate": {
      const pc = demo.pcs.get(m.from);
      if (!pc) return;
      if (pc.remoteDescription) await pc.addIceCandidate(m.data);
      else pc.pendingCandidates.push(m.data);
      break;
    }
    default:
      note(`ignored a signal of kind ${m.kind} from ${m.from}`);
  }
}

function hangUp(peer) {
  const pc = demo.pcs.get(peer);
  if (!pc) return;
  pc.close();
  demo.pcs.delete(peer);
  $("pc-state").textContent = "closed";
  $("remote").srcObject = null;
}

// ----- the broker -------------------------------------------------------------

async function join(e) {
  e.preventDefault();
  if (demo.client) return;
  const urls = $("nodes")
    .value.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const room = $("room").value;
  const client = new SwitchboardClient(urls.length ? urls : [ownNode], {
    peerId: $("peer").value,
    encoding: $("encoding").value,
    token: $("token").value || undefined,
    trace,
  });
  demo.client = client;
  demo.room = room;
  client.on("state", ({ state }) => ($("client-state").textContent = state));
  client.on("welcome", (w) => {
    $("node").textContent = w.node;
    demo.iceServers = w.ice_servers ?? [];
  });
  client.on("reconnected", (r) => note(`reconnected to ${r.node}; rooms joined again: ${r.rooms.join(", ")}`));
  client.on("close", (c) => note(`socket closed (${c.code}${c.reason ? " " + c.reason : ""})${c.willReconnect ? ", reconnecting" : ""}`));
  client.on("peer-left", (m) => {
    if (m.room === room) hangUp(m.peer_id);
  });
  client.on("signal", (m) => {
    demo.queue = demo.queue.then(() => onSignal(m)).catch((err) => note(`handling ${m.kind} from ${m.from}: ${err.message}`));
  });
  client.on("error", (m) => note(`error ${m.code}: ${m.message}`));
  $("join").disabled = true;
  try {
    await client.connect();
    const joined = await client.join(room);
    demo.joined = joined;
    $("leave").disabled = false;
    for (const p of joined.peers) await call(p.peer_id);
  } catch (err) {
    note(`could not join: ${err.code ?? ""} ${err.message}`);
    client.close();
    demo.client = null;
    $("join").disabled = false;
  }
}

async function leave() {
  const client = demo.client;
  if (!client) return;
  for (const peer of [...demo.pcs.keys()]) hangUp(peer);
  try {
    await client.leave(demo.room);
  } catch (err) {
    note(`leave: ${err.code}`);
  }
  client.close();
  demo.client = null;
  $("join").disabled = false;
  $("leave").disabled = true;
}

$("join-form").addEventListener("submit", join);
$("leave").addEventListener("click", leave);
$("dc-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("dc-text").value;
  if (!text) return;
  try {
    demo.send(text);
    $("dc-text").value = "";
  } catch (err) {
    note(err.message);
  }
});
if (params.get("autojoin") === "1") $("join").click();
