#!/usr/bin/env node
// Interop of the OT profile over HTTP + SSE (README, "The OT profile"; docs/protocol.md section 2.4) with the real npm client
// `@open-ot/transport-http-sse` 0.3.0, in headless Chromium, each client in a WebDriver session
// of its own (so a cookie jar of its own: the `syncmux_ot` cookie is what ties a client's
// POSTs to its stream). Run by run.mjs; alone:
//
//     npm install --prefix crates/syncmux-server/tests/node --no-audit --no-fund
//     cargo build -p syncmux-server
//     node crates/syncmux-browser/tests/browser/ot_sse.mjs [SERVER_BIN]
//
// 1. three HttpSseTransport editors and a WebSocket editor converge on `doc-1`;
// 2. a late joiner starts from `init`, and its edits reach everyone;
// 3. a HybridTransport editor on a document of its own has every op acked;
// 4. a HybridTransport reader in polling mode reaches the same text and revision;
// 5. invalid ops and POSTs without a stream are refused and change nothing;
// 6. two servers on one Redis, each client's POSTs going to the server without its stream.
//
// The pages (ot_sse.html, ot_sse_editor.mjs) are served by the server itself (--static) with
// ot_text.mjs and the package's index.js, so that EventSource and fetch are same-origin.
// Prints one line per step; a failure throws with what went wrong. Under CI a missing tool
// (chromium, chromedriver, redis-server, the npm package) fails rather than skips.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { apply } from "../../../syncmux-server/tests/node/ot_text.mjs";
import { freePort, Page, startDriver } from "./demo.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../../..");
const nodeTests = path.join(root, "crates/syncmux-server/tests/node");
const PACKAGE = path.join(nodeTests, "node_modules/@open-ot/transport-http-sse/index.js");
const CHROMEDRIVER = process.env.CHROMEDRIVER ?? "/usr/bin/chromedriver";
const TOKEN = "ot-sse-token";
// Guards against a hang, not timing assertions.
const GUARD_MS = 60000;
const EDITS = 25;
const HYBRID_EDITS = 20;

const step = (line) => console.log(`ot sse: ${line}`);
const children = [];
process.on("exit", () => children.forEach((c) => c.kill()));

/** Rejects with `what` when `promise` has not settled within the guard. */
function guard(promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${GUARD_MS} ms`)), GUARD_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The first stdout line of `child` matching `re`, or a failure when it exits first. */
function lineOf(child, re, what) {
  return guard(
    new Promise((resolve, reject) => {
      createInterface({ input: child.stdout }).on("line", (line) => {
        const m = line.match(re);
        if (m) resolve(m);
      });
      child.on("exit", (code) => reject(new Error(`exited (${code}) before ${what}`)));
    }),
    what,
  );
}

async function startServer(bin, site, extra = []) {
  // No rate limit: dozens of POSTs from one address in a few seconds are this test's normal.
  const args = ["--listen", "127.0.0.1:0", "--static", site, "--token", TOKEN, "--rate-limit", "0"];
  // Its logs only when asked for (RUST_LOG=info): the test's own lines say what happened.
  const env = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "error" };
  const child = spawn(bin, [...args, ...extra], { stdio: ["ignore", "pipe", "inherit"], env });
  children.push(child);
  const [, addr] = await lineOf(child, /ot on ws:\/\/(\S+)\/ot\b/, "syncmux-server's `ot on` line");
  return { http: `http://${addr}`, ws: `ws://${addr}/ot` };
}

async function startRedis() {
  const port = await freePort();
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
  const child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  await lineOf(child, /Ready to accept connections/, "redis-server ready");
  return `redis://127.0.0.1:${port}`;
}

/** One origin in front of two servers: `/ot/messages` goes to `posts`, the rest (the page,
 *  `/ot/events`) to `rest`. A page served through it holds its stream on one server and POSTs
 *  to the other, its cookie same-origin for both. Counts what it routed. */
async function splitProxy(rest, posts) {
  const counts = { events: 0, messages: 0 };
  const proxy = http.createServer((req, res) => {
    const route = req.url.split("?")[0];
    if (route === "/ot/events") counts.events += 1;
    if (route === "/ot/messages") counts.messages += 1;
    const to = new URL(route === "/ot/messages" ? posts : rest);
    const forward = http.request(
      { host: to.hostname, port: to.port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on("error", () => res.destroy());
    // A closed EventSource ends its stream on the server too.
    res.on("close", () => forward.destroy());
    req.pipe(forward);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${proxy.address().port}`, counts, proxy };
}

/** The document's state from the server: the `init` of a new stream (read from Node, the token
 *  as a header), with the stream's cookie. */
async function lateInit(base, docId) {
  const ctl = new AbortController();
  const query = docId ? `?docId=${encodeURIComponent(docId)}` : "";
  const read = async () => {
    const res = await fetch(`${base}/ot/events${query}`, {
      headers: { authorization: `Bearer ${TOKEN}` },
      signal: ctl.signal,
    });
    assert.equal(res.status, 200, `GET /ot/events${query}`);
    assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of res.body) {
      buffered += decoder.decode(chunk, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const lines = buffered.slice(0, end).split("\n");
        buffered = buffered.slice(end + 2);
        const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
        // Comments (`: keepalive`) carry no data.
        if (data.length === 0) continue;
        return { init: JSON.parse(data.join("\n")), cookie: res.headers.get("set-cookie") };
      }
    }
    throw new Error(`GET /ot/events${query}: the stream ended before an event`);
  };
  try {
    return await guard(read(), `init from ${base}`);
  } finally {
    ctl.abort();
  }
}

async function poll(base, docId, since) {
  const url = `${base}/ot/poll?docId=${encodeURIComponent(docId)}&since=${since}`;
  const res = await guard(fetch(url, { headers: { authorization: `Bearer ${TOKEN}` } }), `GET ${url}`);
  assert.equal(res.status, 200, `GET ${url}`);
  return res.json();
}

/** A WebDriver session with the test page open. */
class Browser {
  // Those not closed yet: a failure closes them before it stops chromedriver, which would
  // leave their browsers running.
  static sessions = new Set();

  static async open(driver, origin) {
    const page = await Page.open(driver.base, `${origin}/ot_sse.html`);
    Browser.sessions.add(page);
    // Above the page's own guards, so that theirs are the errors reported.
    await page.cmd("POST", "/timeouts", { script: GUARD_MS + 30000 });
    await page.until(`document.body.dataset.ready === "true"`, `${origin}/ot_sse.html to load`);
    return new Browser(page);
  }

  constructor(page) {
    this.page = page;
  }

  /** Runs `body` (async JS, `args` in scope) in the page; a thrown error fails here. */
  async js(body, ...args) {
    const r = await this.page.eval(body, ...args);
    if (r && typeof r === "object" && Object.keys(r).length === 1 && "error" in r) {
      throw new Error(String(r.error).replace(/^Error: /, ""));
    }
    return r;
  }

  close() {
    Browser.sessions.delete(this.page);
    return this.page.close();
  }
}

/** The editor of ot_sse_editor.mjs in a session of its own; methods return its state. */
class Editor {
  static async open(driver, origin, options) {
    const browser = await Browser.open(driver, origin);
    const state = await browser.js(`return await openEditor(args[0]);`, { token: TOKEN, ...options });
    return new Editor(browser, state);
  }

  constructor(browser, state) {
    this.browser = browser;
    this.name = state.name;
    this.init = state.init;
  }

  /** `count` edits, `burst` of them at once, each acked. */
  async edit(count, burst = 1) {
    await this.arm(count);
    return this.run(burst);
  }

  arm(count) {
    return this.browser.js(`editor.arm(args[0]);`, count);
  }

  run(burst) {
    return this.browser.js(`await editor.run(args[0]); return editor.state();`, burst);
  }

  /** The state once the editor is at `revision`. */
  async at(revision) {
    const s = await this.browser.js(
      `await editor.until("revision " + args[0], () => editor.revision >= args[0]); return editor.state();`,
      revision,
    );
    assert.equal(s.revision, revision, `${this.name}: past revision ${revision}`);
    return s;
  }

  close() {
    return this.browser.close();
  }
}

let seeds = 0x9e3779b9;
const seed = () => (seeds = (seeds * 31 + 7) >>> 0);

/** `count` edits by each editor at once, the states once each has its own acked. Every
 *  editor is armed before any starts, and an armed editor answers each remote op with an edit
 *  on the revision it has: the answers to one op race to the server, which has to transform
 *  all but the first. So ops cross by construction, not by timing. */
async function editTogether(editors, count) {
  await Promise.all(editors.map((e) => e.arm(count)));
  // Editors that start with a burst have ops buffered behind the one in flight from the start.
  return Promise.all(editors.map((e, i) => e.run(1 + (i % 3))));
}

/** Every edit made, acked, nothing pending and no error. */
function checkAcked(s, count) {
  assert.equal(s.failure, null, s.failure);
  assert.deepEqual(s.errors, [], `${s.name}: error events`);
  assert.equal(s.made, count, `${s.name}: edits made`);
  assert.equal(s.acks.length, count, `${s.name}: acks ${JSON.stringify(s.acks)}`);
  assert.equal(s.pending, 0, `${s.name}: ops pending`);
}

/** Each POST of an op answered 202 with the revision its ack gave. */
function checkPosts(s) {
  const answers = s.posts.map((p) => [p.status, p.answer]);
  const acks = s.acks.map((revision) => [202, { success: true, revision }]);
  assert.deepEqual(answers, acks, `${s.name}: POST answers against acks`);
}

function checkConverged(states, init) {
  for (const s of states) {
    assert.equal(s.failure, null, s.failure);
    assert.equal(s.text, init.snapshot, `${s.name}'s text`);
    assert.equal(s.revision, init.revision, `${s.name}'s revision`);
  }
}

const sum = (states, key) => states.reduce((n, s) => n + s[key], 0);

/** Steps 1 and 2: `doc-1` on one server. Returns the editors, still open, and the revision. */
async function converge(driver, server) {
  const kinds = [
    ["a", "sse"],
    ["b", "sse"],
    ["c", "sse"],
    ["w", "ws"],
  ];
  const editors = [];
  for (const [name, kind] of kinds) {
    editors.push(await Editor.open(driver, server.http, { kind, name, seed: seed(), wsUrl: server.ws }));
  }
  for (const e of editors.slice(0, 3)) assert.deepEqual(e.init, { type: "init", snapshot: "", revision: 0 });
  // The WebSocket's snapshot reply is the profile's extension, checked by ot_interop.mjs.
  assert.equal(editors[3].init.text, "");
  assert.equal(editors[3].init.revision, 0);

  const done = await editTogether(editors, EDITS);
  let head = editors.length * EDITS;
  const states = await Promise.all(editors.map((e) => e.at(head)));
  states.forEach((s) => checkAcked(s, EDITS));
  states.slice(0, 3).forEach(checkPosts);
  const { init, cookie } = await lateInit(server.http);
  assert.deepEqual(init, { type: "init", snapshot: states[0].text, revision: head });
  assert.match(cookie ?? "", /^syncmux_ot=[^;]+; Path=\/ot; HttpOnly; SameSite=Lax/);
  checkConverged(states, init);
  const stale = sum(done, "stale");
  const rebased = sum(done, "rebased");
  // None stale would mean the server never transformed an op: see editTogether.
  assert.ok(stale > 0 && rebased > 0, `nothing concurrent: ${stale} stale, ${rebased} rebased`);
  step(
    `1. 3 HttpSseTransport editors and a WebSocket editor: ${head} concurrent ops (${stale} stale ` +
      `at the server, ${rebased} rebased by an editor), each acked and each POST answered 202 with ` +
      `its ack's revision; every text and revision equals a late init's (revision ${head}, ` +
      `${init.snapshot.length} UTF-16 units)`,
  );

  const late = await Editor.open(driver, server.http, { kind: "sse", name: "late", seed: seed() });
  assert.deepEqual(late.init, { type: "init", snapshot: init.snapshot, revision: head });
  const lateDone = await late.edit(3, 3);
  checkAcked(lateDone, 3);
  checkPosts(lateDone);
  head += 3;
  const after = await Promise.all([...editors, late].map((e) => e.at(head)));
  const now = (await lateInit(server.http)).init;
  assert.notEqual(now.snapshot, init.snapshot);
  checkConverged(after, now);
  step(
    `2. a late joiner starts from init (revision ${init.revision}, the others' text); its 3 ` +
      `edits, 2 buffered behind the first, reach all 5 (revision ${head})`,
  );
  return { editors: [...editors, late], late, head };
}

/** Steps 3 and 4: HybridTransport on a document of its own, one editing, one polling. */
async function hybrid(driver, server, doc1) {
  const docId = "hybrid-doc";
  const fresh = { type: "init", snapshot: "", revision: 0, docId };
  const options = { kind: "hybrid", docId, pollingInterval: 50 };
  const writer = await Editor.open(driver, server.http, { ...options, name: "h", seed: seed() });
  const reader = await Editor.open(driver, server.http, { ...options, name: "r", seed: seed() });
  assert.deepEqual(writer.init, fresh);
  assert.deepEqual(reader.init, fresh);
  const polling = await reader.browser.js(`editor.transport.forcePolling(); return editor.state();`);
  assert.equal(polling.mode, "polling");
  assert.equal(polling.streamOpen, false, "the reader's stream is still open");

  const wrote = await writer.edit(HYBRID_EDITS, 3);
  checkAcked(wrote, HYBRID_EDITS);
  checkPosts(wrote);
  assert.ok(wrote.posts.every((p) => p.body.docId === docId), "a POST without the docId");
  assert.equal(wrote.mode, "sse");
  step(
    `3. a HybridTransport editor on ${docId} (init revision 0 there, doc-1 at ${doc1.head}): ` +
      `${HYBRID_EDITS} ops, each acked and each POST answered 202 with its ack's revision`,
  );

  const read = await reader.at(HYBRID_EDITS);
  assert.equal(read.text, wrote.text);
  assert.equal(read.mode, "polling");
  assert.equal(read.streamOpen, false);
  assert.ok(read.polls > 0, "the reader never polled");
  // The poll route itself: every op since 0, in order, rebuilding the text.
  const all = await poll(server.http, docId, 0);
  assert.equal(all.type, "poll");
  assert.equal(all.hasUpdates, true);
  assert.equal(all.revision, HYBRID_EDITS);
  const revisions = Array.from({ length: HYBRID_EDITS }, (_, i) => i + 1);
  assert.deepEqual(all.operations.map((o) => o.revision), revisions);
  assert.equal(all.operations.reduce((text, o) => apply(o.op, text), ""), wrote.text);
  assert.deepEqual(await poll(server.http, docId, HYBRID_EDITS), {
    type: "poll",
    hasUpdates: false,
    operations: [],
    revision: HYBRID_EDITS,
  });
  assert.equal((await lateInit(server.http)).init.revision, doc1.head, "doc-1 moved");
  step(
    `4. a HybridTransport reader in polling mode (forcePolling(), ${read.polls} polls, ` +
      `${read.repeats} repeats) reaches the same text and revision; /ot/poll since 0 replays ` +
      `all ${HYBRID_EDITS} ops to it`,
  );
  await writer.close();
  await reader.close();
}

/** Step 5: refusals change nothing. */
async function refusals(driver, server, doc1) {
  const { late } = doc1;
  const before = (await lateInit(server.http)).init;
  const invalid = [
    ["an unknown component", [{ x: 1 }], doc1.head],
    ["a retain past the end", [{ r: before.snapshot.length + 5 }, { i: "x" }], doc1.head],
    ["a revision from the future", [{ i: "x" }], doc1.head + 100],
  ];
  for (const [what, op, revision] of invalid) {
    const r = await late.browser.js(`return await postRaw(args[0]);`, { type: "op", op, revision });
    assert.equal(r.status, 400, `${what}: ${JSON.stringify(r)}`);
    assert.equal(typeof r.answer?.error, "string", `${what}: ${JSON.stringify(r)}`);
  }
  // The npm client reports a refusal as a failed send.
  const thrown = await late.browser.js(
    `try { await editor.transport.send(args[0]); return null; } catch (e) { return e.message; }`,
    { type: "op", op: [{ x: 1 }], revision: doc1.head },
  );
  assert.match(thrown ?? "resolved", /^Failed to send message/);

  // A browser with the token but no stream of its own: no cookie, then a forged one.
  const ghost = { type: "op", op: [{ i: "ghost" }], revision: doc1.head };
  const stranger = await Browser.open(driver, server.http);
  const noCookie = await stranger.js(
    `document.cookie = "syncmux_token=" + args[1] + "; path=/"; return await postRaw(args[0]);`,
    ghost,
    TOKEN,
  );
  const forged = await stranger.js(
    `document.cookie = "syncmux_ot=forged; path=/ot"; return await postRaw(args[0]);`,
    ghost,
  );
  for (const [what, r] of [["no cookie", noCookie], ["a forged cookie", forged]]) {
    assert.equal(r.status, 404, `${what}: ${JSON.stringify(r)}`);
    assert.equal(typeof r.answer?.error, "string", `${what}: ${JSON.stringify(r)}`);
  }
  await stranger.close();

  assert.deepEqual((await lateInit(server.http)).init, before);
  assert.deepEqual(await poll(server.http, "doc-1", doc1.head), {
    type: "poll",
    hasUpdates: false,
    operations: [],
    revision: doc1.head,
  });
  // Nor does anything land later: the next edit is exactly one revision on, everywhere.
  const next = await late.edit(1);
  assert.deepEqual(next.acks.slice(-1), [doc1.head + 1]);
  const states = await Promise.all(doc1.editors.map((e) => e.at(doc1.head + 1)));
  checkConverged(states, (await lateInit(server.http)).init);
  step(
    `5. ${invalid.length} invalid ops (400, the npm client's send rejects) and 2 POSTs without ` +
      `a stream of their own (404: no cookie, a forged one) change nothing: revision ` +
      `${doc1.head} and text as before, and the next op is ${doc1.head + 1} everywhere`,
  );
}

/** Step 6: two servers on one Redis; X streams from A and POSTs to B, Y the other way round. */
async function scaledOut(driver, bin, site) {
  const redis = await startRedis();
  const a = await startServer(bin, site, ["--redis", redis]);
  const b = await startServer(bin, site, ["--redis", redis]);
  const viaA = await splitProxy(a.http, b.http);
  const viaB = await splitProxy(b.http, a.http);
  const editors = [
    await Editor.open(driver, viaA.url, { kind: "sse", name: "x", seed: seed() }),
    await Editor.open(driver, viaB.url, { kind: "sse", name: "y", seed: seed() }),
    await Editor.open(driver, a.http, { kind: "ws", name: "wa", seed: seed(), wsUrl: a.ws }),
    await Editor.open(driver, b.http, { kind: "ws", name: "wb", seed: seed(), wsUrl: b.ws }),
  ];
  for (const e of editors) assert.equal(e.init.revision, 0, `${e.name}: ${JSON.stringify(e.init)}`);

  const done = await editTogether(editors, EDITS);
  const head = editors.length * EDITS;
  const states = await Promise.all(editors.map((e) => e.at(head)));
  states.forEach((s) => checkAcked(s, EDITS));
  states.slice(0, 2).forEach(checkPosts);
  for (const [proxy, s] of [[viaA, states[0]], [viaB, states[1]]]) {
    assert.deepEqual(proxy.counts, { events: 1, messages: s.posts.length }, `${s.name}'s routes`);
  }
  for (const server of [a, b]) {
    const { init } = await lateInit(server.http);
    assert.deepEqual(init, { type: "init", snapshot: states[0].text, revision: head }, server.http);
    checkConverged(states, init);
  }
  step(
    `6. two servers on one Redis: 2 HttpSseTransport editors, each streaming from one server ` +
      `and POSTing to the other (${states[0].posts.length} and ${states[1].posts.length} ` +
      `POSTs), and a WebSocket editor on each: ${head} ops (${sum(done, "stale")} stale), each ` +
      `acked; both servers' late inits and every editor at revision ${head} with one text`,
  );
  await Promise.all(editors.map((e) => e.close()));
  viaA.proxy.close();
  viaB.proxy.close();
}

/** Whether `what` can run: missing outside CI skips (said so), under CI fails. */
function have(what, found, hint) {
  if (found) return true;
  if (process.env.CI) throw new Error(`${what} is missing: ${hint}`);
  step(`SKIPPED (${what} is missing: ${hint})`);
  return false;
}

export async function checkOtSse(serverBin) {
  const tools =
    have("the npm package", existsSync(PACKAGE), `npm install --prefix ${path.relative(root, nodeTests)}`) &&
    have("chromium", existsSync("/usr/bin/chromium"), "apt-get install chromium") &&
    have("chromedriver", existsSync(CHROMEDRIVER), "apt-get install chromium-driver");
  if (!tools) return;
  const redis = spawnSync("redis-server", ["--version"]).error === undefined;

  const site = mkdtempSync(path.join(tmpdir(), "syncmux-ot-sse-"));
  process.on("exit", () => rmSync(site, { recursive: true, force: true }));
  for (const [from, name] of [
    [path.join(here, "ot_sse.html"), "ot_sse.html"],
    [path.join(here, "ot_sse_editor.mjs"), "ot_sse_editor.mjs"],
    [path.join(nodeTests, "ot_text.mjs"), "ot_text.mjs"],
    [PACKAGE, "index.js"],
  ]) {
    copyFileSync(from, path.join(site, name));
  }

  const driver = await startDriver();
  try {
    const server = await startServer(serverBin, site);
    const doc1 = await converge(driver, server);
    await hybrid(driver, server, doc1);
    await refusals(driver, server, doc1);
    await Promise.all(doc1.editors.map((e) => e.close()));
    if (have("redis-server", redis, "apt-get install redis-server")) await scaledOut(driver, serverBin, site);
  } finally {
    // A session still running a script closes once the page's guard ends it.
    await Promise.allSettled([...Browser.sessions].map((page) => guard(page.close(), "session close")));
    driver.child.kill();
  }
  step("ok");
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const bin = process.argv[2] ?? path.join(root, "target/debug/syncmux-server");
  checkOtSse(bin).then(
    () => process.exit(0),
    (e) => {
      console.error(`ot sse: FAILED: ${e.stack ?? e}`);
      process.exit(1);
    },
  );
}
