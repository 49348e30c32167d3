// A minimal broadcast server on the `ws` package, written for the fan-out benchmark
// (examples/fanout_bench.rs, scripts/fanout-bench): the same role as the syncmux example
// server on that workload. Clients `subscribe` to tables; a `push_request`'s changes are
// routed by table, each encoded once and sent to every subscriber of its table; the pusher
// gets a `push_response`. Everything else is answered with an error frame.
//
//   node tests/node/fanout_server.mjs     # prints "listening on ws://127.0.0.1:PORT/sync/ws"
import { WebSocketServer } from "ws";

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false });
const subscribers = new Map(); // table -> Set<WebSocket>
let seq = 0;

wss.on("connection", (ws) => {
  const tables = new Set();
  ws.on("message", (data, isBinary) => {
    let msg;
    try {
      msg = JSON.parse(isBinary ? "" : data.toString());
    } catch {
      ws.send(JSON.stringify({ type: "error", payload: { code: "INVALID_FRAME", message: "not JSON" } }));
      return;
    }
    const p = msg.payload || {};
    switch (msg.type) {
      case "subscribe":
        for (const t of p.tables || []) {
          tables.add(t);
          if (!subscribers.has(t)) subscribers.set(t, new Set());
          subscribers.get(t).add(ws);
        }
        ws.send(JSON.stringify({ type: "ack", id: msg.id, payload: { recovered: true, cursor: `0.${seq}` } }));
        break;
      case "push_request": {
        let latest = null;
        for (const change of p.changes || []) {
          seq += 1;
          latest = change.hlc;
          const frame = JSON.stringify({ type: "change", payload: change, cursor: `0.${seq}` });
          for (const peer of subscribers.get(change.table) || []) {
            if (peer !== ws) peer.send(frame);
          }
        }
        ws.send(JSON.stringify({
          type: "push_response", id: msg.id,
          payload: { merged: (p.changes || []).length, latest_hlc: latest, cursor: `0.${seq}` },
        }));
        break;
      }
      default:
        ws.send(JSON.stringify({ type: "error", id: msg.id, payload: { code: "UNKNOWN_TYPE", message: String(msg.type) } }));
    }
  });
  ws.on("close", () => {
    for (const t of tables) subscribers.get(t)?.delete(ws);
  });
});

wss.on("listening", () => {
  console.log(`listening on ws://127.0.0.1:${wss.address().port}/sync/ws`);
});
