// A worker of the older rendezvous service's protocol (what its worker
// does): it learns its public UDP endpoint with a real STUN Binding request
// to the node's responder, connects to /ws/register/{id}, reports the
// endpoint (update_udp_endpoint) and answers chat_message with chat_response.
import dgram from "node:dgram";
import crypto from "node:crypto";
import WebSocket from "ws";

const MAGIC = 0x2112a442;

/** Sends a STUN Binding request from a fresh UDP socket; resolves with the
 *  XOR-MAPPED-ADDRESS (`ip:port`) and the socket (kept open, as a worker
 *  keeps its hole-punching socket). */
export function stunBinding(stunAddr) {
  const [host, port] = stunAddr.split(":");
  const sock = dgram.createSocket("udp4");
  const txid = crypto.randomBytes(12);
  const req = Buffer.alloc(20);
  req.writeUInt16BE(0x0001, 0);
  req.writeUInt16BE(0, 2);
  req.writeUInt32BE(MAGIC, 4);
  txid.copy(req, 8);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no STUN answer within 5 s")), 5000);
    sock.on("message", (msg) => {
      if (msg.length < 20 || msg.readUInt16BE(0) !== 0x0101 || !msg.subarray(8, 20).equals(txid)) return;
      let off = 20;
      while (off + 4 <= msg.length) {
        const type = msg.readUInt16BE(off);
        const len = msg.readUInt16BE(off + 2);
        if (type === 0x0020 && msg[off + 5] === 0x01) {
          const p = msg.readUInt16BE(off + 6) ^ (MAGIC >>> 16);
          const a = msg.readUInt32BE(off + 8) ^ MAGIC;
          const ip = [a >>> 24, (a >>> 16) & 255, (a >>> 8) & 255, a & 255].join(".");
          clearTimeout(timer);
          return resolve({ udp: `${ip}:${p}`, ip, port: p, sock });
        }
        off += 4 + len + ((4 - (len % 4)) % 4);
      }
    });
    sock.bind(0, "127.0.0.1", () => sock.send(req, Number(port), host));
  });
}

export class Worker {
  constructor(nodeAddr, id) {
    this.id = id;
    this.messages = [];
    this.waiters = [];
    this.ws = new WebSocket(`ws://${nodeAddr}/ws/register/${encodeURIComponent(id)}`);
    this.open = new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
    this.replyWith = (m) => `echo: ${m.content}`;
    this.ws.on("message", (data) => {
      let m;
      try { m = JSON.parse(data.toString()); } catch { return; }
      this.messages.push(m);
      if (m.type === "chat_message") {
        this.send({ type: "chat_response", admin_session_id: m.admin_session_id, content: this.replyWith(m) });
      }
      this.waiters = this.waiters.filter((w) => !w(m));
    });
  }
  send(m) { this.ws.send(JSON.stringify(m)); }
  /** The first message (seen or coming) of `type`, bounded. */
  next(type, ms = 10000) {
    const seen = this.messages.find((m) => m.type === type);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.id}: no ${type} within ${ms} ms`)), ms);
      this.waiters.push((m) => {
        if (m.type !== type) return false;
        clearTimeout(timer);
        resolve(m);
        return true;
      });
    });
  }
  close() { this.ws.close(); }
}
