// The vendored MessagePack encoder/decoder: the bytes docs/PROTOCOL.md shows,
// round trips of every type the protocol carries, and refusals.

import test from "node:test";
import assert from "node:assert/strict";

import { msgpack } from "../switchboard.js";

const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));

test("the ping and pong of docs/PROTOCOL.md, byte for byte", () => {
  assert.equal(hex(msgpack.encode({ type: "ping", id: 1 })), "82a474797065a470696e67a2696401");
  assert.deepEqual(msgpack.decode(unhex("82 a4 74 79 70 65 a4 70 6f 6e 67 a2 69 64 01")), { type: "pong", id: 1 });
  assert.deepEqual(msgpack.decode(unhex("81 a4 74 79 70 65 a4 70 6f 6e 67")), { type: "pong" });
});

test("integers take the smallest width and come back equal", () => {
  const cases = [
    [0, "00"],
    [127, "7f"],
    [128, "cc80"],
    [65535, "cdffff"],
    [65536, "ce00010000"],
    [2 ** 32, "cf0000000100000000"],
    [-1, "ff"],
    [-32, "e0"],
    [-33, "d0df"],
    [-129, "d1ff7f"],
    [-32769, "d2ffff7fff"],
    [-(2 ** 31) - 1, "d3ffffffff7fffffff"],
  ];
  for (const [n, h] of cases) {
    assert.equal(hex(msgpack.encode(n)), h, `encode ${n}`);
    assert.equal(msgpack.decode(unhex(h)), n, `decode ${h}`);
  }
  // Beyond 2^53: BigInt both ways.
  assert.equal(msgpack.decode(unhex("cfffffffffffffffff")), 2n ** 64n - 1n);
  assert.equal(hex(msgpack.encode(2n ** 64n - 1n)), "cfffffffffffffffff");
  assert.throws(() => msgpack.encode(2n ** 64n), RangeError);
});

test("round trips of strings, floats, arrays, maps, bin, nil and booleans", () => {
  const values = [
    null,
    true,
    false,
    1.5,
    -0.25,
    "",
    "héllo ✓",
    "x".repeat(31),
    "x".repeat(32),
    "y".repeat(300),
    "z".repeat(70000),
    [],
    [1, [2, [3]], "a"],
    Array.from({ length: 20 }, (_, i) => i),
    {},
    { a: 1, b: { c: [true, null] } },
    Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, i])),
    new Uint8Array([0, 1, 255]),
    new Uint8Array(300).fill(7),
  ];
  for (const v of values) assert.deepEqual(msgpack.decode(msgpack.encode(v)), v);
  // undefined map values are left out, as JSON.stringify does.
  assert.deepEqual(msgpack.decode(msgpack.encode({ a: 1, b: undefined })), { a: 1 });
  // float32 decodes.
  assert.equal(msgpack.decode(unhex("ca3fc00000")), 1.5);
  // A non-string key becomes its text; `__proto__` stays a plain key.
  assert.deepEqual(msgpack.decode(unhex("81 01 a1 78")), { 1: "x" });
  const o = msgpack.decode(msgpack.encode(JSON.parse('{"__proto__":{"polluted":1}}')));
  assert.equal(Object.getPrototypeOf(o), Object.prototype);
  assert.equal({}.polluted, undefined);
  assert.deepEqual(Object.keys(o), ["__proto__"]);
});

test("refuses ext, truncated input, trailing bytes and invalid UTF-8", () => {
  assert.throws(() => msgpack.decode(unhex("d4 01 00")), /unsupported type byte 0xd4/);
  assert.throws(() => msgpack.decode(unhex("a5 61 62")), /truncated/);
  assert.throws(() => msgpack.decode(unhex("dd ff ff ff ff")), /truncated/);
  assert.throws(() => msgpack.decode(unhex("01 02")), /1 bytes after the value/);
  assert.throws(() => msgpack.decode(unhex("a2 c3 28")), TypeError);
  assert.throws(() => msgpack.encode(() => 1), TypeError);
});
