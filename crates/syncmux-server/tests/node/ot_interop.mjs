#!/usr/bin/env node
// Interop of the OT profile (README, "The OT profile") with the real npm client transport,
// `@open-ot/transport-websocket` 0.3.0: ack, broadcast, a stale op transformed, error frames,
// `?token=` auth, the rate limit, and concurrent clients converging.
//
//     npm install --prefix tests/node --no-audit --no-fund
//     node tests/node/ot_interop.mjs ws://127.0.0.1:8787/ot TOKEN RATE_LIMIT
//
// The server must be fresh (`doc-1` empty), require TOKEN, and allow RATE_LIMIT messages per
// connection per window. Run by tests/ot_interop_node.rs against the example server. Prints
// one line per step and exits 0, or prints what went wrong and exits 1.
import assert from "node:assert/strict";
import { WebSocketTransport } from "@open-ot/transport-websocket";
import { apply, len, transform } from "./ot_text.mjs";

const [url, token, rateArg] = process.argv.slice(2);
if (!url || !token || !rateArg) {
  console.error("usage: node tests/node/ot_interop.mjs ws://HOST:PORT/ot TOKEN RATE_LIMIT");
  process.exit(2);
}
const RATE_LIMIT = Number(rateArg);
// A guard against a hung server, not a timing assertion.
const GUARD_MS = 15000;
const withToken = (t) => `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(t)}`;

const step = (name) => console.log(`ot interop: ${name}`);

/** A `WebSocketTransport` whose received messages are queued for `next`. */
class Peer {
  constructor(name, tok = token) {
    this.name = name;
    this.transport = new WebSocketTransport(withToken(tok));
    this.messages = [];
    this.waiters = [];
  }

  connect() {
    return this.transport.connect((msg) => {
      this.messages.push(msg);
      const waiters = this.waiters;
      this.waiters = [];
      waiters.forEach((w) => w());
    });
  }

  send(msg) {
    return this.transport.send(msg);
  }

  /** The first queued or future message that `pick` accepts (removed; others stay). */
  async next(what, pick = () => true) {
    const deadline = Date.now() + GUARD_MS;
    for (;;) {
      const at = this.messages.findIndex(pick);
      if (at >= 0) return this.messages.splice(at, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`${this.name}: no ${what}; queued: ${JSON.stringify(this.messages)}`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  disconnect() {
    return this.transport.disconnect();
  }
}

const type = (t) => (m) => m.type === t;

// ---- a client of one document: the seed's loop, one op in flight ----

class Editor extends Peer {
  constructor(name, seed) {
    super(name);
    this.rng = seed;
    this.text = "";
    this.revision = 0;
    this.inflight = null;
    this.acked = 0;
    this.wake = null;
  }

  random(n) {
    // xorshift32: reproducible edits per client.
    this.rng ^= this.rng << 13;
    this.rng ^= this.rng >>> 17;
    this.rng ^= this.rng << 5;
    return (this.rng >>> 0) % n;
  }

  connect() {
    return this.transport.connect((msg) => this.receive(msg));
  }

  receive(msg) {
    if (msg.type === "snapshot") {
      this.synced = true;
      this.text = msg.text;
      this.revision = msg.revision;
    } else if (msg.type === "ack") {
      assert.equal(msg.revision, this.revision + 1, `${this.name}: ack out of order`);
      this.revision = msg.revision;
      this.inflight = null;
      this.acked += 1;
    } else if (msg.type === "op") {
      assert.equal(msg.revision, this.revision + 1, `${this.name}: gap before ${msg.revision}`);
      // The server put its op before ours (ours is on side right there): apply its op after
      // ours, and ours becomes the op after its.
      let op = msg.op;
      if (this.inflight) {
        this.crossed = (this.crossed ?? 0) + 1;
        const mine = this.inflight;
        op = transform(msg.op, mine, true);
        this.inflight = transform(mine, msg.op, false);
      }
      this.text = apply(op, this.text);
      this.revision = msg.revision;
    } else {
      this.failure = new Error(`${this.name}: unexpected ${JSON.stringify(msg)}`);
    }
    const wake = this.wake;
    this.wake = null;
    if (wake) wake();
  }

  async settle(what, done) {
    const deadline = Date.now() + GUARD_MS;
    while (!done()) {
      if (this.failure) throw this.failure;
      if (Date.now() > deadline) throw new Error(`${this.name}: no ${what}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    if (this.failure) throw this.failure;
  }

  /** A random insert or delete, sent and waited for (remote ops keep arriving meanwhile). */
  async edit() {
    const at = this.random(this.text.length + 1);
    let op;
    if (at < this.text.length && this.random(3) === 0) {
      op = [{ r: at }, { d: Math.min(1 + this.random(3), this.text.length - at) }];
    } else {
      op = [{ r: at }, { i: `${this.name}${this.random(10)}` }];
    }
    op = op.filter((c) => len(c) > 0);
    this.text = apply(op, this.text);
    this.inflight = op;
    const acked = this.acked;
    await this.send({ type: "op", op, revision: this.revision });
    await this.settle("ack", () => this.acked > acked);
  }
}

async function basics() {
  const [a, b, c] = ["a", "b", "c"].map((n) => new Peer(n));
  await Promise.all([a, b, c].map((p) => p.connect()));
  step("three transports connected with ?token=");

  await a.send({ type: "op", op: [{ i: "Hello" }], revision: 0 });
  assert.deepEqual(await a.next("ack", type("ack")), { type: "ack", revision: 1 });
  for (const p of [b, c]) {
    const op = await p.next("broadcast", type("op"));
    assert.deepEqual(op, { type: "op", op: [{ i: "Hello" }], revision: 1 });
  }
  assert.equal(a.messages.length, 0, "the sender gets its ack, not its op");
  step("ack to the sender, the op to the two others");

  await c.send({ type: "op", op: [{ i: ">> " }], revision: 1 });
  assert.deepEqual(await c.next("ack", type("ack")), { type: "ack", revision: 2 });
  await a.next("c's op", type("op"));
  await b.next("c's op", type("op"));
  // b still at revision 1: its op is transformed past c's insert.
  await b.send({ type: "op", op: [{ r: 5 }, { i: " world" }], revision: 1 });
  assert.deepEqual(await b.next("ack", type("ack")), { type: "ack", revision: 3 });
  for (const p of [a, c]) {
    const op = await p.next("transformed op", type("op"));
    assert.deepEqual(op, { type: "op", op: [{ r: 8 }, { i: " world" }], revision: 3 });
  }
  await a.send({ type: "snapshot" });
  const snap = await a.next("snapshot", type("snapshot"));
  assert.equal(snap.text, ">> Hello world");
  assert.equal(snap.revision, 3);
  step("a stale op transformed against the ops since its revision; snapshot extension");

  await a.send({ type: "op", op: [{ i: "x" }], revision: 99 });
  assert.deepEqual(await a.next("error", type("error")), {
    type: "error",
    message: "Invalid revision: 99 > 3",
  });
  await a.send({ type: "op", op: [{ x: 1 }], revision: 3 });
  const invalid = await a.next("error", type("error"));
  assert.match(invalid.message, /Insert, Retain, or Delete/, JSON.stringify(invalid));
  await a.send({ type: "op", op: [{ r: 100 }, { i: "x" }], revision: 3 });
  const past = await a.next("error", type("error"));
  assert.match(past.message, /past the end/, JSON.stringify(past));
  // The connection stays open, and nothing reached the others.
  await a.send({ type: "op", op: [{ d: 3 }], revision: 3 });
  assert.deepEqual(await a.next("ack", type("ack")), { type: "ack", revision: 4 });
  for (const p of [b, c]) {
    assert.deepEqual(await p.next("op", type("op")), { type: "op", op: [{ d: 3 }], revision: 4 });
    assert.equal(p.messages.length, 0, `${p.name}: ${JSON.stringify(p.messages)}`);
  }
  step("op from the future and invalid ops answered with errors; the connection stays open");
  await Promise.all([a, b, c].map((p) => p.disconnect()));
}

async function auth() {
  for (const [what, bad] of [
    ["wrong token", new WebSocketTransport(withToken("wrong"))],
    ["no token", new WebSocketTransport(url)],
  ]) {
    const refused = await bad.connect(() => {}).then(
      () => null,
      (e) => e,
    );
    assert.ok(refused, `${what}: connected`);
    assert.match(String(refused.message ?? refused.error ?? refused), /401/, `${what}`);
  }
  step("a wrong or missing token fails the connection (HTTP 401)");
}

async function rateLimit() {
  const p = new Peer("limited");
  await p.connect();
  for (let i = 0; i < RATE_LIMIT; i += 1) await p.send({ type: "snapshot" });
  await p.send({ type: "op", op: [{ i: "too many" }], revision: 0 });
  for (let i = 0; i < RATE_LIMIT; i += 1) await p.next("snapshot", type("snapshot"));
  assert.deepEqual(await p.next("error", type("error")), {
    type: "error",
    message: "Rate limit exceeded",
  });
  await p.disconnect();
  step(`message ${RATE_LIMIT + 1} in the window answered "Rate limit exceeded"`);
}

async function converge() {
  const CLIENTS = 5;
  // Every message counts against the rate limit, the snapshot too.
  const EDITS = Math.min(40, RATE_LIMIT - 2);
  const editors = Array.from({ length: CLIENTS }, (_, i) => new Editor(`e${i}`, 0x9e3779b9 ^ (i + 1)));
  await Promise.all(editors.map((e) => e.connect()));
  await Promise.all(editors.map((e) => e.send({ type: "snapshot" })));
  await Promise.all(editors.map((e) => e.settle("snapshot", () => e.synced)));
  const start = editors[0].revision;
  assert.ok(editors.every((e) => e.revision === start && e.text === editors[0].text));
  await Promise.all(
    editors.map(async (e) => {
      for (let i = 0; i < EDITS; i += 1) await e.edit();
    }),
  );
  const head = start + CLIENTS * EDITS;
  await Promise.all(editors.map((e) => e.settle(`revision ${head}`, () => e.revision === head)));
  const check = new Peer("check");
  await check.connect();
  await check.send({ type: "snapshot" });
  const snap = await check.next("snapshot", type("snapshot"));
  assert.equal(snap.revision, head);
  for (const e of editors) assert.equal(e.text, snap.text, `${e.name} diverged`);
  const crossed = editors.reduce((n, e) => n + (e.crossed ?? 0), 0);
  // Not a timing assertion: with five editors each always having an op in flight, most
  // remote ops cross one; none crossing would mean the clients took turns.
  assert.ok(crossed > 0, "no op ever crossed another: nothing was concurrent");
  await Promise.all([...editors, check].map((p) => p.disconnect()));
  step(
    `${CLIENTS} concurrent clients, ${CLIENTS * EDITS} ops (${crossed} crossed one in flight): ` +
      "every text equals the server's",
  );
}

async function main() {
  await basics();
  await auth();
  await rateLimit();
  await converge();
  console.log("ot interop: ok");
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`ot interop: FAILED: ${e.stack ?? e}`);
    process.exit(1);
  },
);
