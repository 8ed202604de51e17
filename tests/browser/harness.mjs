// The browser tests' harness: a real redis-server and N real node processes
// (target/debug/switchboard) clustered through it on free loopback ports,
// each waited for until its /readyz answers 200, and headless Chromium
// (Debian's /usr/bin/chromium through playwright-core). Everything started
// here is killed by `cleanup()` (and on process exit).
//
// Ports follow tests/it/cluster_helpers.rs: redis-server cannot be handed a
// bound socket, so a port below the ephemeral range is picked, the server is
// started on it, and it counts as ours only when its INFO names our child's
// pid (otherwise another port is tried). Nodes bind 127.0.0.1:0 and print
// the port they got.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, "../..");
export const BIN = process.env.SWITCHBOARD_BIN ?? path.join(REPO, "target/debug/switchboard");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const children = new Set();
const dirs = new Set();

function killAll() {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
process.on("exit", killAll);

/** Polls `check` every 50 ms until it returns a truthy value, at most `ms`; throws `what` on timeout. */
export async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/** Sends one RESP command to 127.0.0.1:port; resolves with the raw reply text, or null. */
function redisCommand(port, args) {
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = "";
    const done = (v) => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(1000, () => done(null));
    sock.on("error", () => done(null));
    sock.on("connect", () => {
      sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("")}`);
    });
    sock.on("data", (d) => {
      buf += d.toString();
      const m = /^\$(\d+)\r\n/.exec(buf);
      if (buf.startsWith("+") || buf.startsWith("-")) done(buf);
      else if (m && buf.length >= m[0].length + Number(m[1])) done(buf);
    });
  });
}

/** A redis-server on a free loopback port, persistence off. */
export async function startRedis() {
  for (let tries = 0; tries < 20; tries++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (!(await portIsFree(port))) continue;
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    children.add(child);
    let exited = false;
    child.once("exit", () => (exited = true));
    const ours = await waitFor(
      "redis-server to answer",
      async () => {
        if (exited) return "exited";
        const info = await redisCommand(port, ["INFO", "server"]);
        return info?.includes(`process_id:${child.pid}\r\n`) ? "ours" : null;
      },
      20000,
    );
    if (ours === "ours") return { port, url: `redis://127.0.0.1:${port}`, child };
    children.delete(child);
  }
  throw new Error("redis-server did not start on any of 20 ports");
}

/**
 * Starts a node clustered through `redis` (key prefix `prefix`), with `env`
 * on top (`SWITCHBOARD_<SECTION>__<KEY>`), and waits for /readyz 200.
 */
export async function startNode(redis, { nodeId, prefix, env = {} }) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "sb-browser-"));
  dirs.add(dir);
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("SWITCHBOARD_") && k !== "RUST_LOG") childEnv[k] = v;
  }
  Object.assign(childEnv, {
    NO_COLOR: "1",
    SWITCHBOARD_SERVER__LISTEN: "127.0.0.1:0",
    SWITCHBOARD_STUN__LISTEN: "127.0.0.1:0",
    SWITCHBOARD_STUN__LISTEN_V6: "",
    SWITCHBOARD_LOG__LEVEL: "info",
    SWITCHBOARD_SERVER__NODE_ID: nodeId,
    SWITCHBOARD_CLUSTER__REDIS_URL: redis.url,
    SWITCHBOARD_CLUSTER__KEY_PREFIX: prefix,
    SWITCHBOARD_CLUSTER__HEARTBEAT_MS: "250",
    SWITCHBOARD_CLUSTER__NODE_TTL_MS: "3000",
    SWITCHBOARD_CLUSTER__PROBE_WINDOW_MS: "1500",
    ...env,
  });
  const child = spawn(BIN, [], { cwd: dir, env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const node = { id: nodeId, child, log: [], addr: null, stun: null, exit: null };
  node.exited = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      node.exit = { code, signal };
      resolve(node.exit);
    }),
  );
  const onLine = (line) => {
    node.log.push(line);
    if (node.log.length > 2000) node.log.shift();
    const m = /listening on ([0-9.]+:\d+)/.exec(line);
    if (m && !node.addr) node.addr = m[1];
    const stun = /STUN responder bound to udp ([0-9.]+:\d+)/.exec(line);
    if (stun && !node.stun) node.stun = stun[1];
  };
  for (const stream of [child.stdout, child.stderr]) {
    let rest = "";
    stream.on("data", (d) => {
      const lines = (rest + d.toString()).split("\n");
      rest = lines.pop();
      lines.forEach(onLine);
    });
  }
  await waitFor(`node ${nodeId} to log its address`, () => node.addr ?? (node.exit && Promise.reject(nodeFailed(node))), 30000);
  node.http = `http://${node.addr}`;
  node.ws = `ws://${node.addr}/ws`;
  await waitFor(`node ${nodeId} /readyz`, async () => {
    if (node.exit) throw nodeFailed(node);
    try {
      const r = await fetch(`${node.http}/readyz`);
      return r.status === 200;
    } catch {
      return false;
    }
  });
  return node;
}

function nodeFailed(node) {
  return new Error(`node ${node.id} exited (${JSON.stringify(node.exit)}); its log:\n${node.log.join("\n")}`);
}

/** Sends SIGTERM (a drain) and resolves with the exit status, at most `ms` later. */
export async function terminate(node, ms = 30000) {
  node.child.kill("SIGTERM");
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`node ${node.id} did not exit within ${ms} ms of SIGTERM`)), ms);
  });
  try {
    return await Promise.race([node.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A key prefix no other run shares. */
export function uniquePrefix(name) {
  return `b${process.pid}-${name}-${Date.now().toString(36)}`;
}

/** Headless Chromium via playwright-core. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      // Host candidates as plain addresses rather than mDNS names, which
      // nothing resolves in a headless sandbox.
      "--disable-features=WebRtcHideLocalIpsWithMdns",
      // run.sh runs the tests in a network namespace of their own (loopback
      // and a veth pair): loopback candidates too, so peers on 127.0.0.1
      // can also pair.
      "--allow-loopback-in-peer-connection",
      "--no-sandbox",
    ],
  });
}

/** Kills every process the harness started and removes their directories. */
export function cleanup() {
  killAll();
  children.clear();
  dirs.clear();
}
