// The operator console's chat page (docs/ADMIN.md). Worker ids and chat
// text are put into the page with textContent, never as HTML.
const $ = (id) => document.getElementById(id);
const scheme = location.protocol === "https:" ? "wss" : "ws";

// One admin session per tab: replies come back to it.
let session = sessionStorage.getItem("sb-admin-session");
if (!session) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  session = "admin-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem("sb-admin-session", session);
}
$("session").textContent = session;

let list = null;
let chat = null;
let current = null;

function status(text, ok) {
  $("status").textContent = text;
  $("status").className = ok ? "status ok" : "status bad";
}

function showError(text) {
  $("error").textContent = text || "";
}

function renderPicker(items) {
  const ul = $("picker");
  ul.replaceChildren();
  for (const w of items) {
    const li = document.createElement("li");
    if (w.id === current) li.className = "selected";
    const b = document.createElement("button");
    b.textContent = w.id;
    b.title = `on ${w.node}`;
    b.dataset.worker = w.id;
    b.addEventListener("click", () => open(w.id));
    li.appendChild(b);
    ul.appendChild(li);
  }
}

function listSocket() {
  list = new WebSocket(`${scheme}://${location.host}/ws/admin`);
  list.addEventListener("message", (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    if (m.type === "snapshot") {
      renderPicker(m.workers.items);
      if ($("search").value) list.send(JSON.stringify({ type: "query", search: $("search").value, limit: 100 }));
    } else if (m.type === "workers") {
      renderPicker(m.items);
    }
  });
  list.addEventListener("close", () => setTimeout(listSocket, 1000));
}

function line(m) {
  const li = document.createElement("li");
  li.className = m.from === "admin" ? "admin" : "worker";
  li.textContent = m.text;
  li.title = new Date(m.ts).toISOString();
  $("messages").appendChild(li);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function open(worker) {
  if (chat) { chat.onclose = null; chat.close(); }
  current = worker;
  location.hash = encodeURIComponent(worker);
  $("with").textContent = `Chat with ${worker}`;
  $("messages").replaceChildren();
  showError("");
  for (const li of $("picker").children) {
    li.className = li.firstChild && li.firstChild.dataset.worker === worker ? "selected" : "";
  }
  const url = `${scheme}://${location.host}/ws/chat/${encodeURIComponent(session)}/${encodeURIComponent(worker)}`;
  chat = new WebSocket(url);
  chat.addEventListener("open", () => {
    status("live", true);
    $("text").disabled = false;
    $("send-btn").disabled = false;
  });
  chat.addEventListener("message", (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    if (m.type === "history") m.messages.forEach(line);
    else if (m.type === "chat") { showError(""); line(m); }
    else if (m.type === "error") showError(`${m.code}: ${m.message}`);
  });
  chat.onclose = () => {
    status("chat closed; reopening…", false);
    setTimeout(() => { if (current === worker) open(worker); }, 1000);
  };
}

$("send").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text || !chat || chat.readyState !== WebSocket.OPEN) return;
  chat.send(JSON.stringify({ type: "chat", text }));
  $("text").value = "";
});

let t = null;
$("search").addEventListener("input", () => {
  clearTimeout(t);
  t = setTimeout(() => {
    if (list && list.readyState === WebSocket.OPEN) {
      list.send(JSON.stringify({ type: "query", search: $("search").value, limit: 100 }));
    }
  }, 200);
});

listSocket();
if (location.hash.length > 1) open(decodeURIComponent(location.hash.slice(1)));
