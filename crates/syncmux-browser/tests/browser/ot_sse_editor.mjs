// The browser side of ot_sse.mjs: one OT text editor per page, on one of three transports:
// the npm `@open-ot/transport-http-sse` 0.3.0's `HttpSseTransport` or `HybridTransport`
// (served beside this file as index.js), or a browser WebSocket on `/ot`.
// ot_sse.mjs drives it over WebDriver through `window.openEditor` and `window.editor`.
//
// The editor is a full OT client, as open-ot's own is: one op in flight, the edits made
// meanwhile buffered, and every remote op transformed past both before it is applied. Its
// edits are driven by events (an ack or a remote op), not by timers, so that they cross the
// other editors' ops without any sleep.
import { HttpSseTransport, HybridTransport } from "./index.js";
import { apply, transform } from "./ot_text.mjs";

// A guard against a hung server, not a timing assertion.
const GUARD_MS = 30000;

// Every POST to /ot/messages and its answer, in the order the requests went out (the
// transports drop the answer's body; the test checks it against the acks), and the polls.
const realFetch = window.fetch.bind(window);
const posts = [];
let unanswered = 0;
let polls = 0;
window.fetch = async (url, init = {}) => {
  const href = String(url);
  if (href.includes("/poll?")) polls += 1;
  if (init.method !== "POST" || !href.endsWith("/messages")) return realFetch(url, init);
  const post = { body: JSON.parse(init.body), status: null, answer: null };
  posts.push(post);
  unanswered += 1;
  try {
    const res = await realFetch(url, init);
    post.answer = await res.clone().json().catch(() => null);
    post.status = res.status;
    return res;
  } finally {
    // The ack may come over the stream before the POST's answer: the editor waits for both.
    unanswered -= 1;
    window.editor?.wake();
  }
};

/** A POST from this page that the editor does not count: status and parsed body. */
window.postRaw = async (body) => {
  const res = await realFetch("/ot/messages", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, answer: await res.json().catch(() => null) };
};

/** The WebSocket `/ot` behind the transports' interface (connect, send, disconnect). */
class WebSocketTransport {
  constructor(url) {
    this.url = url;
    this.closed = null;
  }
  connect(onReceive) {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url);
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error(`WebSocket ${this.url} failed`));
      this.ws.onclose = (e) => (this.closed = e.code);
      this.ws.onmessage = (e) => onReceive(JSON.parse(e.data));
    });
  }
  async send(msg) {
    this.ws.send(JSON.stringify(msg));
  }
  async disconnect() {
    this.ws.close();
  }
}

/** Where `at` does not split a surrogate pair (ops count UTF-16 units, a JS string's). */
function boundary(text, at) {
  const c = text.charCodeAt(at - 1);
  return c >= 0xd800 && c < 0xdc00 ? at + 1 : at;
}

class Editor {
  constructor(name, transport, seed) {
    this.name = name;
    this.transport = transport;
    this.rng = seed;
    this.text = "";
    this.revision = 0;
    this.init = null;
    this.inflight = null;
    this.sentAt = 0; // the revision the op in flight was made on
    this.buffer = [];
    this.budget = 0;
    this.made = 0;
    this.acks = [];
    this.stale = 0; // acked ops that the server had to transform
    this.rebased = 0; // remote ops transformed past ops of ours not yet acked
    this.errors = [];
    this.failure = null;
    this.applied = new Map(); // revision -> op, to recognise a poll's repeat
    this.repeats = 0;
    this.recent = []; // the last messages, for a failure's report
    this.waiters = [];
  }

  async connect(kind) {
    await this.transport.connect((msg) => this.receive(msg));
    // The WebSocket wire has no init: the snapshot request is its extension (README, "The OT profile").
    if (kind === "ws") await this.transport.send({ type: "snapshot" });
    await this.until("init", () => this.init);
  }

  receive(msg) {
    this.recent = [...this.recent.slice(-7), JSON.stringify(msg)];
    try {
      this.handle(msg);
    } catch (e) {
      const sent = JSON.stringify(this.inflight);
      this.failure ??=
        `${this.name}: ${e.message}; in flight ${sent} (made on ${this.sentAt}); ` +
        `last received: ${this.recent.join(" ")}`;
    }
    this.wake();
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((w) => w());
  }

  handle(msg) {
    if (msg.type === "error") {
      this.errors.push(msg.message);
      return;
    }
    if (!this.init) {
      if (msg.type !== "init" && msg.type !== "snapshot") throw new Error("a message before init");
      this.init = msg;
      this.text = msg.snapshot ?? msg.text;
      this.revision = msg.revision;
      return;
    }
    if (msg.type === "ack") {
      if (!this.inflight) throw new Error("an ack with no op in flight");
      this.expect(msg.revision);
      if (msg.revision > this.sentAt + 1) this.stale += 1;
      this.applied.set(msg.revision, this.inflight);
      this.acks.push(msg.revision);
      this.revision = msg.revision;
      this.inflight = null;
      this.flush();
      this.step();
    } else if (msg.type === "op") {
      // A poll may overlap the one before it and bring an op again: only the same op is.
      if (this.applied.has(msg.revision) && msg.revision <= this.revision) {
        const seen = JSON.stringify(this.applied.get(msg.revision));
        if (seen !== JSON.stringify(msg.op)) throw new Error(`revision ${msg.revision} was ${seen}`);
        this.repeats += 1;
        return;
      }
      this.expect(msg.revision);
      this.applied.set(msg.revision, msg.op);
      // The server put this op before ours, which it will transform as the right side: ours
      // become the ops after it, and it the op after ours.
      let op = msg.op;
      if (this.inflight || this.buffer.length > 0) this.rebased += 1;
      if (this.inflight) {
        [this.inflight, op] = [transform(this.inflight, op, false), transform(op, this.inflight, true)];
      }
      this.buffer = this.buffer.map((mine) => {
        const rebased = transform(mine, op, false);
        op = transform(op, mine, true);
        return rebased;
      });
      this.text = apply(op, this.text);
      this.revision = msg.revision;
      this.step();
    } else {
      throw new Error("an unexpected message");
    }
  }

  expect(revision) {
    if (revision !== this.revision + 1) throw new Error(`revision ${revision} after ${this.revision}`);
  }

  /** Sends the first buffered op once nothing is in flight. */
  flush() {
    if (this.inflight || this.buffer.length === 0) return;
    this.inflight = this.buffer.shift();
    this.sentAt = this.revision;
    this.transport.send({ type: "op", op: this.inflight, revision: this.revision }).catch((e) => {
      this.failure ??= `${this.name}: send failed: ${e.message}`;
    });
  }

  /** One more edit while the budget lasts: each event brings one, so edits cross. */
  step() {
    if (this.made < this.budget) this.edit();
  }

  edit() {
    const text = this.text;
    const at = boundary(text, this.random(text.length + 1));
    let op;
    if (at < text.length && this.random(3) === 0) {
      const end = boundary(text, Math.min(at + 1 + this.random(3), text.length));
      op = [{ r: at }, { d: end - at }];
    } else {
      // Non-ASCII and a surrogate pair: the server must count UTF-16 units, as JS does.
      const extra = ["", "é", "😀"][this.random(3)];
      op = [{ r: at }, { i: `${this.name}${this.random(10)}${extra}` }];
    }
    op = op.filter((c) => (c.r ?? c.d ?? c.i.length) > 0);
    this.text = apply(op, text);
    this.buffer.push(op);
    this.made += 1;
    this.flush();
  }

  random(n) {
    // xorshift32: reproducible edits per editor.
    this.rng ^= this.rng << 13;
    this.rng ^= this.rng >>> 17;
    this.rng ^= this.rng << 5;
    return (this.rng >>> 0) % n;
  }

  /** `count` more edits, made as events come (a remote op or an ack brings one). */
  arm(count) {
    this.budget += count;
  }

  /** Starts the armed edits with `burst` at once (buffered behind the first); resolves once
   *  every one is acked. */
  async run(burst = 1) {
    for (let i = 0; i < burst; i += 1) this.step();
    await this.until(`acks for ${this.budget} edits`, () => this.made === this.budget && this.settled());
  }

  settled() {
    return !this.inflight && this.buffer.length === 0 && unanswered === 0;
  }

  /** Resolves once `done()` holds, re-checked on every message. */
  async until(what, done) {
    const deadline = Date.now() + GUARD_MS;
    while (!done()) {
      if (this.failure) throw new Error(this.failure);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${what}: ${JSON.stringify(this.state())}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 1000));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    if (this.failure) throw new Error(this.failure);
  }

  state() {
    const t = this.transport;
    return {
      name: this.name,
      text: this.text,
      revision: this.revision,
      init: this.init,
      made: this.made,
      pending: (this.inflight ? 1 : 0) + this.buffer.length,
      unanswered,
      acks: this.acks,
      stale: this.stale,
      rebased: this.rebased,
      repeats: this.repeats,
      errors: this.errors,
      failure: this.failure,
      posts,
      polls,
      mode: t.getCurrentMode?.() ?? null,
      streamOpen: t.eventSource ? t.eventSource.readyState !== EventSource.CLOSED : false,
      wsClosed: t.closed ?? null,
    };
  }
}

/** Opens this page's editor: `kind` is "sse", "hybrid" or "ws". */
window.openEditor = async ({ kind, name, seed, token, docId, wsUrl, pollingInterval }) => {
  // An EventSource cannot carry a header: the token goes as the cookie the server takes.
  document.cookie = `syncmux_token=${encodeURIComponent(token)}; path=/; SameSite=Lax`;
  let transport;
  if (kind === "sse") transport = new HttpSseTransport("/ot");
  else if (kind === "hybrid") {
    // The inactivity switch to polling is not under test: forcePolling() is.
    transport = new HybridTransport({ docId, baseUrl: "/ot", pollingInterval, inactivityTimeout: 3600000 });
  } else if (kind === "ws") transport = new WebSocketTransport(`${wsUrl}?token=${encodeURIComponent(token)}`);
  else throw new Error(`no transport ${kind}`);
  window.editor = new Editor(name, transport, seed);
  await window.editor.connect(kind);
  return window.editor.state();
};

document.body.dataset.ready = "true";
