// Type declarations of switchboard.js: the Switchboard native protocol
// client (docs/PROTOCOL.md).

/** A value the server relays as is (`meta`, `data`). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** With MessagePack, `data` may also hold bytes and integers beyond 2^53. */
export type Payload = Json | Uint8Array | bigint | Payload[] | { [key: string]: Payload };

export type Encoding = "json" | "msgpack";
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export declare const SUBPROTOCOLS: Readonly<{ json: "switchboard.v1.json"; msgpack: "switchboard.v1.msgpack" }>;
export declare const FATAL_CLOSE_CODES: Readonly<{ 4001: "unauthorized"; 4002: "replaced" }>;

/** A WebSocket constructor: the browser's, Node ≥ 22's global, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocol: string) => WebSocketLike;

export interface ClientOptions {
  /** The peer id to ask for; without one the server assigns a UUID (kept across reconnects). */
  peerId?: string;
  /** Default presence metadata (`hello.meta`). */
  meta?: Json;
  /** A JWT, or a function giving one (called for every `hello`, so it may refresh). */
  token?: string | (() => string | Promise<string>);
  /** `json` (default) or `msgpack`. */
  encoding?: Encoding;
  /** Reconnect by itself after a lost connection or a drain (default true). */
  reconnect?: boolean;
  /** Backoff: the first retry waits about this long (default 250 ms), each next one twice as long... */
  minDelayMs?: number;
  /** ...up to this (default 10000 ms). Each delay is drawn from [d/2, d]. */
  maxDelayMs?: number;
  /** Attempts per (re)connect before giving up with `gave-up` (default Infinity). */
  maxAttempts?: number;
  /** After close 1012 without a `reconnect` hint: the first retry waits a random time below this (default 1000 ms). */
  drainJitterMs?: number;
  /** How long a request waits for its answer, including time spent reconnecting (default 10000 ms). */
  requestTimeoutMs?: number;
  /** How long one connection attempt may take up to `welcome` and the re-joins (default 10000 ms). */
  connectTimeoutMs?: number;
  /**
   * Ask for a resumable session (default true): after a lost socket or a
   * drain, the client resumes it with `welcome.resume_token` and the last
   * `seq` it read, keeping its rooms and getting what it missed (see
   * docs/PROTOCOL.md, "Resume"); when the server cannot resume it, a
   * `resume-failed` event comes and the client joins its rooms again.
   */
  resume?: boolean;
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /** Timer functions (default the global ones); tests pass a fake clock. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  /** Random numbers in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
  /** Sees every message sent (`out`) and received (`in`), decoded. */
  trace?: (direction: "in" | "out", message: Record<string, unknown>, url: string) => void;
  /** Gets exceptions thrown by event listeners (default console.error). */
  onListenerError?: (error: unknown) => void;
}

export type Id = number | string;

export interface Welcome {
  type: "welcome";
  id?: Id;
  peer_id: string;
  node: string;
  observed_addr: string;
  heartbeat_ms: number;
  stun_username?: string;
  reconnect_secret: string;
  /** Give back with `last_seq` to resume this session (resumable sessions). */
  resume_token?: string;
  /** This welcome resumed a session: what it missed follows. */
  resumed?: boolean;
}
export interface ResumeFailed {
  type: "resume-failed";
  /** `expired`, `overflow`, `unknown-seq`, `node-lost`, `unknown`, `unavailable`, `draining`, `disabled`. */
  reason: string;
  /** Messages lost, when the server knows. */
  missed: number | null;
}
export interface PeerInfo {
  peer_id: string;
  meta: Json;
}
export interface Joined {
  type: "joined";
  id?: Id;
  room: string;
  peers: PeerInfo[];
}
export interface Ack {
  type: "ack";
  id: Id;
}
export interface PeerJoined {
  type: "peer-joined";
  room: string;
  peer_id: string;
  meta: Json;
}
export interface PeerLeft {
  type: "peer-left";
  room: string;
  peer_id: string;
  reason: "left" | "disconnected" | "replaced" | "timeout";
}
export interface RoomClosed {
  type: "room-closed";
  room: string;
  reason: "expired" | "deleted";
}
export interface SignalEvent {
  type: "signal";
  from: string;
  kind: string;
  data: Payload;
}
export interface MessageEvent {
  type: "message";
  room: string;
  from: string;
  data: Payload;
}
export interface ReconnectHint {
  type: "reconnect";
  reason: "draining";
  after_ms: number;
}
export interface ServerError {
  type: "error";
  id?: Id;
  code: string;
  message: string;
}
export interface Paired {
  type: "paired";
  pairing_id: string;
  role: "initiator" | "responder";
  peer: { peer_id: string; observed_addr: string | null; public_ip: string | null; udp: string | null };
}
export interface PairLost {
  type: "pair-lost";
  pairing_id: string;
  reason: "unpaired" | "disconnected" | "timeout" | "replaced";
}
export interface EndpointEvent {
  type: "endpoint";
  udp: string;
  source: "stun";
}
export type ServerMessage =
  | Welcome
  | Joined
  | Ack
  | PeerJoined
  | PeerLeft
  | RoomClosed
  | SignalEvent
  | MessageEvent
  | ReconnectHint
  | ServerError
  | Paired
  | PairLost
  | EndpointEvent
  | ResumeFailed
  | { type: "pong"; id?: Id };

export interface ClientEvents {
  // Server messages (those that are not answers to this client's requests).
  signal: SignalEvent;
  message: MessageEvent;
  "peer-joined": PeerJoined;
  "peer-left": PeerLeft;
  "room-closed": RoomClosed;
  reconnect: ReconnectHint;
  /** A server error with no request of this client to reject (a request without id), or an undecodable frame (`client-decode`). */
  error: ServerError;
  paired: Paired;
  "pair-lost": PairLost;
  endpoint: EndpointEvent;
  /** A resume was refused: the session that follows is fresh (its rooms are joined again). */
  "resume-failed": ResumeFailed;
  /** Every `joined`, the re-joins after a reconnect included. */
  joined: Joined;
  /** Every server event above. */
  "*": ServerMessage;
  // The client's own events.
  /** A connection is ready (the first one, and each after a reconnect). */
  welcome: Welcome;
  state: { state: ClientState };
  /** A socket closed; `willReconnect` tells whether the client goes on by itself. */
  close: { code: number; reason: string; url: string; willReconnect: boolean };
  /** A retry is scheduled: attempt number, its delay, the URL it will try. */
  reconnecting: { attempt: number; delayMs: number; url: string };
  /** A connection attempt failed (and another follows). */
  "connect-error": { url: string; error: SwitchboardError };
  /** Connected again: the session resumed (`resumed`), or hello with the peer id and secret and the rooms joined again. */
  reconnected: { url: string; node: string; rooms: string[]; resumed?: true };
  /** A room could not be joined again after a reconnect; it is dropped. */
  "rejoin-failed": { room: string; error: SwitchboardError };
}

export declare class SwitchboardError extends Error {
  /** A server error code (docs/PROTOCOL.md §11) or the client's own: `timeout`, `connection-lost`, `closed`, `gave-up`, `connect-failed`. */
  readonly code: string;
  readonly closeCode?: number;
  readonly closeReason?: string;
  readonly request?: string;
}

export declare class SwitchboardClient {
  constructor(urls: string | string[], options?: ClientOptions);
  readonly urls: string[];
  readonly options: Required<Pick<ClientOptions, "encoding" | "minDelayMs" | "maxDelayMs">> & ClientOptions;
  readonly peerId: string | null;
  readonly node: string | null;
  readonly welcome: Welcome | null;
  readonly state: ClientState;
  readonly url: string | null;
  /** The rooms this client is in, each with its other members (peer id → meta). A copy. */
  readonly rooms: Map<string, Map<string, Json>>;

  on<K extends keyof ClientEvents>(type: K, fn: (ev: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, fn: (ev: ClientEvents[K]) => void): void;
  once<K extends keyof ClientEvents>(type: K): Promise<ClientEvents[K]>;

  connect(): Promise<Welcome>;
  join(room: string, options?: { meta?: Json; token?: string }): Promise<Joined>;
  leave(room: string): Promise<void>;
  signal(to: string, kind: string, data?: Payload, options?: { ack?: boolean }): Promise<Ack | undefined>;
  broadcast(room: string, data?: Payload, options?: { ack?: boolean }): Promise<Ack | undefined>;
  /** Round-trip time in milliseconds. */
  ping(): Promise<number>;
  /** Any other client message (`pair`, `unpair`, `endpoint`); resolves with its answer. */
  request(message: { type: string; [field: string]: unknown }): Promise<ServerMessage>;
  close(code?: number, reason?: string): void;
  /** The backoff delay before retry `n` (0-based). */
  backoffDelay(n: number): number;
}

export declare const msgpack: {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
};
