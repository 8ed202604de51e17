// Starts a real redis-server and Switchboard node processes (target/debug)
// for the browser tests, on free loopback ports, and stops them all.
import { spawn } from "node:child_process";
import { mkdtempSync, existsSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../../..");
export const binary = path.join(repo, "target/debug/switchboard");

const children = [];

/** A TCP port below the ephemeral range that is free right now. */
async function freePort() {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const ok = await new Promise((resolve) => {
      const s = net.createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error("no free port");
}

/** Resolves with the first match of `re` in the child's output (bounded). */
function waitOutput(child, re, what, ms = 20000) {
  return new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`${what}: nothing matching ${re} within ${ms} ms:\n${buf}`)), ms);
    const on = (d) => {
      buf += d.toString();
      const m = buf.match(re);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout.on("data", on);
    child.stderr.on("data", on);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}):\n${buf}`));
    });
  });
}

export async function startRedis() {
  for (let i = 0; i < 10; i++) {
    const port = await freePort();
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    try {
      await waitOutput(child, /Ready to accept connections/, "redis-server");
      return { url: `redis://127.0.0.1:${port}`, child };
    } catch (e) {
      child.kill("SIGKILL");
    }
  }
  throw new Error("redis-server did not start");
}

/** Starts a node; resolves with its HTTP and STUN addresses once ready. */
export async function startNode(redisUrl, prefix, nodeId, env = {}) {
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run cargo build`);
  const cwd = mkdtempSync(path.join(os.tmpdir(), "sb-console-"));
  const child = spawn(binary, [], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      SWITCHBOARD_SERVER__LISTEN: "127.0.0.1:0",
      SWITCHBOARD_STUN__LISTEN: "127.0.0.1:0",
      SWITCHBOARD_STUN__LISTEN_V6: "",
      SWITCHBOARD_LOG__LEVEL: "info",
      SWITCHBOARD_CLUSTER__REDIS_URL: redisUrl,
      SWITCHBOARD_CLUSTER__KEY_PREFIX: prefix,
      SWITCHBOARD_CLUSTER__HEARTBEAT_MS: "250",
      SWITCHBOARD_CLUSTER__NODE_TTL_MS: "3000",
      SWITCHBOARD_SERVER__NODE_ID: nodeId,
      ...env,
    },
  });
  children.push(child);
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const stunP = waitOutput(child, /STUN responder bound to udp (127\.0\.0\.1:\d+)/, `${nodeId} STUN`);
  const [, addr] = await waitOutput(child, /listening on (127\.0\.0\.1:\d+)/, nodeId);
  const [, stun] = await stunP;
  const deadline = Date.now() + 15000;
  for (;;) {
    try {
      const r = await fetch(`http://${addr}/readyz`);
      if (r.status === 200) break;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${nodeId} not ready within 15 s:\n${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { id: nodeId, addr, stun, child, log: () => log };
}

export function stopAll() {
  for (const c of children) {
    if (c.exitCode === null) c.kill("SIGKILL");
  }
}
