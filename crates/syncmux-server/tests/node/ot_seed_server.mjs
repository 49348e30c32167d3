#!/usr/bin/env node
// The OT baseline for benches/ot_e2e.rs: a minimal Node server built the seed's way (`ws`,
// one in-memory document with its whole history, each op transformed on submit against the
// ops since its revision, acked to its sender and sent on to every other client, with the
// seed's per-connection rate limit and ping heartbeat). No Redis and no persistence: it is
// the cheapest the seed's design gets, so the comparison flatters it.
//
//     node tests/node/ot_seed_server.mjs [PORT]    # prints `listening on ws://127.0.0.1:PORT/ot`
import { WebSocketServer } from "ws";
import { apply, transform } from "./ot_text.mjs";

const RATE_LIMIT = Number(process.env.OT_RATE_LIMIT ?? 0); // messages per minute; 0: off
const PING_MS = 30000;

let text = "";
const history = [];

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.argv[2] ?? 0) });
wss.on("listening", () => {
  console.log(`listening on ws://127.0.0.1:${wss.address().port}/ot`);
});

wss.on("connection", (ws) => {
  ws.isAlive = true;
  ws.on("pong", () => {
    ws.isAlive = true;
  });
  let count = 0;
  let windowEnd = Date.now() + 60000;
  const error = (message) => ws.send(JSON.stringify({ type: "error", message }));
  ws.on("message", (data) => {
    if (RATE_LIMIT > 0) {
      const now = Date.now();
      if (now > windowEnd) {
        count = 0;
        windowEnd = now + 60000;
      }
      count += 1;
      if (count > RATE_LIMIT) return error("Rate limit exceeded");
    }
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch (e) {
      return error(`Invalid JSON: ${e.message}`);
    }
    if (msg.type !== "op") return error(`Unknown message type: ${msg.type}`);
    if (!Array.isArray(msg.op)) return error("Operation must be an array");
    const revision = msg.revision;
    if (!(revision >= 0 && revision <= history.length)) {
      return error(`Invalid revision: ${revision} > ${history.length}`);
    }
    let op = msg.op;
    for (let i = revision; i < history.length; i += 1) op = transform(op, history[i], false);
    try {
      text = apply(op, text);
    } catch (e) {
      return error(e.message);
    }
    history.push(op);
    ws.send(JSON.stringify({ type: "ack", revision: history.length }));
    const update = JSON.stringify({ type: "op", op, revision: history.length });
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === 1) client.send(update);
    }
  });
});

const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, PING_MS);
wss.on("close", () => clearInterval(heartbeat));
process.on("SIGTERM", () => process.exit(0));
