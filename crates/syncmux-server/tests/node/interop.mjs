#!/usr/bin/env node
// Interop with a third-party client: drives a running syncmux server with Node's `ws`
// package, speaking the wire contract (docs/protocol.md section 4) as a plain JSON client would.
//
//     npm install --prefix tests/node --no-audit --no-fund
//     node tests/node/interop.mjs ws://127.0.0.1:8787/sync/ws
//
// Run by tests/interop_node.rs against the example server. Prints one line per step and
// exits 0, or prints what went wrong and exits 1.
import assert from "node:assert/strict";
import WebSocket from "ws";

const url = process.argv[2];
if (!url) {
  console.error("usage: node tests/node/interop.mjs ws://HOST:PORT/sync/ws");
  process.exit(2);
}
// A guard against a hung server, not a timing assertion.
const GUARD_MS = 15000;

/** A connection whose incoming frames are parsed and queued for `next`. */
class Peer {
  constructor(name, protocols) {
    this.name = name;
    this.frames = [];
    this.waiters = [];
    const sep = url.includes("?") ? "&" : "?";
    this.ws = new WebSocket(`${url}${sep}node_id=${name}`, protocols);
    this.ws.on("message", (data, isBinary) => {
      assert.equal(isBinary, false, `${name}: the server sends text frames only`);
      this.frames.push(JSON.parse(data.toString("utf8")));
      this.wake();
    });
    this.closed = new Promise((resolve) => this.ws.on("close", (code) => resolve(code)));
  }

  open() {
    return new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((w) => w());
  }

  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** The first queued or future frame that `pick` accepts (it is removed; others stay). */
  async next(what, pick) {
    const deadline = Date.now() + GUARD_MS;
    for (;;) {
      const at = this.frames.findIndex(pick);
      if (at >= 0) return this.frames.splice(at, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`${this.name}: no ${what}; queued: ${JSON.stringify(this.frames)}`);
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

  /** The answer to the request `id` (whatever its type). */
  reply(id, key = "id") {
    return this.next(`answer to ${id}`, (f) => f[key] === id);
  }

  async close() {
    this.ws.close(1000);
    return this.closed;
  }
}

const step = (name) => console.log(`interop: ${name}`);

const record = (pk, ts, node) => ({
  table: "docs",
  pk,
  field: "title",
  crdt_type: "lww",
  hlc: { ts, c: 0, node },
  node_id: node,
  value: `v-${pk}`,
  // Unknown fields pass through the server untouched (docs/protocol.md section 5).
  x_client: { tag: "node-ws" },
});

async function main() {
  // A client that offers the subprotocol, and one that offers none (a plain seed client).
  const alice = new Peer("node-alice", ["syncmux.v1"]);
  const bob = new Peer("node-bob", []);
  await Promise.all([alice.open(), bob.open()]);
  assert.equal(alice.ws.protocol, "syncmux.v1");
  assert.equal(bob.ws.protocol, "");
  step("connected (with and without the syncmux.v1 subprotocol)");

  bob.send({ type: "subscribe", id: "sub-1", payload: { tables: ["docs"] } });
  const subscribed = await bob.reply("sub-1");
  assert.equal(subscribed.type, "ack", JSON.stringify(subscribed));
  step("subscribe acknowledged");

  const first = record("doc-1", 1700000000000000000, "node-alice");
  alice.send({
    type: "push_request",
    id: "push-1",
    payload: { node_id: "node-alice", changes: [first] },
  });
  const pushed = await alice.reply("push-1");
  assert.equal(pushed.type, "push_response", JSON.stringify(pushed));
  assert.equal(pushed.payload.merged, 1);
  assert.deepEqual(pushed.payload.latest_hlc, first.hlc);
  assert.equal(typeof pushed.payload.cursor, "string");
  step("push merged");

  const live = await bob.next("live change", (f) => f.type === "change" || f.type === "changes");
  const got = live.type === "change" ? [live.payload] : live.payload;
  assert.deepEqual(got, [first]);
  assert.equal(live.cursor, pushed.payload.cursor);
  step("subscriber got the change pushed by another connection, with its cursor");

  alice.send({ type: "pull_request", id: "pull-1", payload: { tables: ["docs"] } });
  const pulled = await alice.reply("pull-1");
  assert.equal(pulled.type, "pull_response", JSON.stringify(pulled));
  assert.deepEqual(pulled.payload.changes, [first]);
  assert.equal(pulled.payload.cursor, pushed.payload.cursor);
  // The seed's spelling: `request_id`, and an HLC as a string; `since` is exclusive.
  const since = `${first.hlc.ts}:0:node-alice`;
  alice.send({ type: "pull_request", request_id: "pull-2", payload: { tables: ["docs"], since } });
  const empty = await alice.reply("pull-2", "request_id");
  assert.equal(empty.type, "pull_response", JSON.stringify(empty));
  assert.equal(empty.id, undefined, "the answer echoes the id under the request's key");
  assert.deepEqual(empty.payload.changes, []);
  step("pull (id and request_id, since exclusive)");

  alice.send({
    type: "presence_update",
    id: "pres-1",
    payload: { topic: "doc-1", data: { cursor: 3 } },
  });
  assert.equal((await alice.reply("pres-1")).type, "ack");
  const joined = await alice.next("presence event", (f) => f.type === "presence_event");
  assert.equal(joined.payload.type, "join");
  assert.equal(joined.payload.node_id, "node-alice");
  assert.deepEqual(joined.payload.data, { cursor: 3 });
  bob.send({ type: "presence_get", id: "get-1", payload: { topic: "doc-1" } });
  const snapshot = await bob.reply("get-1");
  assert.equal(snapshot.type, "presence_snapshot", JSON.stringify(snapshot));
  assert.deepEqual(
    snapshot.payload.states.map((s) => [s.node_id, s.data]),
    [["node-alice", { cursor: 3 }]],
  );
  step("presence update, event and snapshot");

  alice.send({ type: "ping", id: "ping-1", payload: { n: 42 } });
  const pong = await alice.reply("ping-1");
  assert.equal(pong.type, "pong");
  assert.deepEqual(pong.payload, { n: 42 });
  step("ping answered with pong");

  alice.send("{this is not json");
  const invalid = await alice.next("error frame", (f) => f.type === "error");
  assert.equal(invalid.payload.code, "INVALID_FRAME", JSON.stringify(invalid));
  alice.send({ type: "no_such_type", id: "u-1" });
  const unknown = await alice.reply("u-1");
  assert.equal(unknown.payload.code, "UNKNOWN_TYPE", JSON.stringify(unknown));
  // The connection keeps working after bad frames.
  alice.send({ type: "ping", id: "ping-2" });
  assert.equal((await alice.reply("ping-2")).type, "pong");
  step("malformed frame answered with INVALID_FRAME, unknown type with UNKNOWN_TYPE");

  const [a, b] = await Promise.all([alice.close(), bob.close()]);
  assert.equal(a, 1000);
  assert.equal(b, 1000);
  step("closed with 1000");
  console.log("interop: ok");
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`interop: FAILED: ${e.stack ?? e}`);
    process.exit(1);
  },
);
