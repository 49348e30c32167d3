// The shared-list demo: plain JavaScript over the SyncClient class (no bundler).
//
// Data model: an item is a row of table "items" (pk = item id) with last-writer-wins fields
// "text" and "done"; deleting writes a tombstone. Every change is a change record pushed to
// the server and streamed to every page that subscribed. Presence topic "list" carries
// { name, color, editing } for each page.
// The npm package built by build.sh; index.html maps the bare specifier with an import map.
import init, { SyncClient } from "syncmux";

const TABLE = "items";
const TOPIC = "list";
const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss" : "ws";
const url = params.get("server") ?? `${scheme}://${location.host}/sync/ws`;
const nodeId = params.get("node") ?? `browser-${crypto.randomUUID().slice(0, 8)}`;
const colors = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2"];
const color = colors[[...nodeId].reduce((h, ch) => (h * 31 + ch.charCodeAt(0)) >>> 0, 7) % colors.length];

const $ = (id) => document.getElementById(id);
const nameInput = $("name");
nameInput.value = params.get("name") ?? `guest-${nodeId.slice(-4)}`;

// ----- last-writer-wins state ------------------------------------------------------------------

/** pk -> field -> { hlc: [ts, c, node], value, tombstone } */
const rows = new Map();
/** node_id -> presence data */
const people = new Map();
let editing = null;

function parseHlc(hlc) {
  const [ts, c, ...node] = String(hlc).split(":");
  return [BigInt(ts), Number(c), node.join(":")];
}
function newer(a, b) {
  if (a[0] !== b[0]) return a[0] > b[0];
  if (a[1] !== b[1]) return a[1] > b[1];
  return a[2] > b[2];
}

// A hybrid logical clock: never behind the wall clock nor behind anything seen.
let clock = [0n, 0];
function tick() {
  const wall = BigInt(Date.now()) * 1000000n;
  clock = wall > clock[0] ? [wall, 0] : [clock[0], clock[1] + 1];
  return `${clock[0]}:${clock[1]}:${nodeId}`;
}
function observe(hlc) {
  if (hlc[0] > clock[0] || (hlc[0] === clock[0] && hlc[1] > clock[1])) clock = [hlc[0], hlc[1]];
}

function apply(records) {
  for (const r of records) {
    if (r.table !== TABLE) continue;
    const hlc = parseHlc(r.hlc);
    observe(hlc);
    const row = rows.get(r.pk) ?? new Map();
    const old = row.get(r.field);
    if (!old || newer(hlc, old.hlc)) row.set(r.field, { hlc, value: r.value, tombstone: !!r.tombstone });
    rows.set(r.pk, row);
  }
  render();
}

function change(pk, field, value, tombstone = false) {
  const record = { table: TABLE, pk, field, crdt_type: "lww", hlc: tick(), node_id: nodeId, value };
  if (tombstone) record.tombstone = true;
  apply([record]); // optimistic; the server echoes it back, which merges to the same state
  client.push([record]).catch((e) => showError(e));
}

// ----- presence --------------------------------------------------------------------------------

function announce() {
  client.updatePresence(TOPIC, { name: nameInput.value, color, editing }).catch(showError);
}
function setPerson(nodeId, data) {
  if (data == null) people.delete(nodeId);
  else people.set(nodeId, data);
  render();
}

// ----- rendering -------------------------------------------------------------------------------

function visibleItems() {
  const items = [];
  for (const [pk, row] of rows) {
    if (row.get("deleted")?.value === true || row.get("text")?.tombstone) continue;
    const text = row.get("text")?.value;
    if (typeof text !== "string") continue;
    items.push({ pk, text, done: row.get("done")?.value === true, at: row.get("text").hlc });
  }
  return items.sort((a, b) => (newer(a.at, b.at) ? 1 : -1));
}

let rendering = false;
function render() {
  rendering = true;
  try { renderNow(); } finally { rendering = false; }
}

function renderNow() {
  const list = $("items");
  const items = visibleItems();
  $("empty").hidden = items.length > 0;
  const editors = new Map();
  for (const [id, p] of people) if (id !== nodeId && p.editing) editors.set(p.editing, p);
  list.replaceChildren(...items.map((item) => {
    const li = document.createElement("li");
    li.dataset.pk = item.pk;
    li.classList.toggle("done", item.done);
    const check = document.createElement("input");
    check.type = "checkbox";
    check.checked = item.done;
    check.onchange = () => change(item.pk, "done", check.checked);
    const text = document.createElement("span");
    text.className = "text";
    if (editing === item.pk) {
      const input = document.createElement("input");
      input.value = item.text;
      input.onkeydown = (e) => { if (e.key === "Enter") input.blur(); if (e.key === "Escape") { input.value = item.text; input.blur(); } };
      input.onblur = () => {
        if (rendering) return; // a re-render replaced the input; the edit goes on
        if (input.value.trim() && input.value !== item.text) change(item.pk, "text", input.value.trim());
        editing = null; announce(); render();
      };
      text.append(input);
      queueMicrotask(() => input.focus());
    } else {
      text.textContent = item.text;
      text.onclick = () => { editing = item.pk; announce(); render(); };
    }
    li.append(check, text);
    const editor = editors.get(item.pk);
    if (editor) {
      li.classList.add("edited");
      li.style.setProperty("--editor", editor.color);
      const badge = document.createElement("span");
      badge.className = "editor";
      badge.textContent = `${editor.name} is editing`;
      li.append(badge);
    }
    const remove = document.createElement("button");
    remove.className = "remove";
    remove.title = "Remove";
    remove.textContent = "✕";
    remove.onclick = () => change(item.pk, "deleted", true);
    li.append(remove);
    return li;
  }));
  const textOf = new Map(items.map((i) => [i.pk, i.text]));
  $("people").replaceChildren(...[...people].sort(([a], [b]) => (a < b ? -1 : 1)).map(([id, p]) => {
    const li = document.createElement("li");
    li.dataset.node = id;
    li.style.setProperty("--color", p.color ?? "#999");
    const dot = document.createElement("span");
    dot.className = "dot";
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = id === nodeId ? `${p.name} (you)` : p.name;
    const doing = document.createElement("span");
    doing.className = "doing";
    doing.textContent = p.editing ? `editing “${textOf.get(p.editing) ?? "…"}”` : "";
    li.append(dot, name, doing);
    return li;
  }));
}

function setStatus(state, text = state) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}
function showError(e) {
  console.error(e);
  setStatus($("status").dataset.state, `${e.code ?? "error"}: ${e.message}`);
}

// ----- wiring ----------------------------------------------------------------------------------

await init();
const client = new SyncClient(url, { nodeId, reconnectDelay: 1000, maxReconnectDelay: 10000 });
window.syncClient = client; // for the console (and the end-to-end test)

client.on("connected", async () => {
  setStatus("open", "connected");
  // After a reconnect the client restores subscription and presence itself; refresh who is here.
  const snapshot = await client.getPresence(TOPIC);
  people.clear();
  for (const s of snapshot.states) people.set(s.node_id, s.data);
  render();
});
client.on("disconnected", () => setStatus("connecting", "disconnected"));
client.on("reconnecting", (attempt, delay) => setStatus("reconnecting", `reconnecting (#${attempt}, ${Math.round(delay)} ms)`));
client.on("closed", (info) => setStatus("closed", `closed: ${info.message}`));
client.on("error", showError);
client.on("change", ({ changes }) => apply(changes));
client.on("presence", (e) => setPerson(e.node_id, e.type === "leave" ? null : e.data));
client.on("resync", async () => apply((await client.pull([TABLE])).changes));

$("add-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("new-item").value.trim();
  if (!text) return;
  $("new-item").value = "";
  change(crypto.randomUUID(), "text", text);
};
nameInput.onchange = announce;

setStatus("connecting");
// Subscribe first, then pull: anything written in between arrives twice and merges once.
await client.subscribe([TABLE]);
announce();
apply((await client.pull([TABLE])).changes);
document.body.dataset.ready = "true";
