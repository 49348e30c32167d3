// End-to-end check of the demo page (crates/syncmux-browser/web/): two headless Chromium sessions,
// driven over WebDriver through chromedriver (no npm packages). An item added in one page
// appears in the other, and each page lists the other's presence; screenshots of both pages
// go to target/browser-demo-{a,b}.png.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { writeFileSync } from "node:fs";
import path from "node:path";

const CHROMEDRIVER = process.env.CHROMEDRIVER ?? "/usr/bin/chromedriver";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--no-first-run", "--window-size=1000,640"];

export function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function startDriver() {
  const port = await freePort();
  const child = spawn(CHROMEDRIVER, [`--port=${port}`], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => { if (/started successfully/i.test(d)) resolve(); });
    child.on("exit", (c) => reject(new Error(`chromedriver exited (${c})`)));
  });
  return { base: `http://127.0.0.1:${port}`, child };
}

async function call(base, method, route, body) {
  const res = await fetch(base + route, {
    method, headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${route}: ${JSON.stringify(json.value)}`);
  return json.value;
}

export class Page {
  static async open(base, url) {
    const caps = { capabilities: { alwaysMatch: { "goog:chromeOptions": { binary: "/usr/bin/chromium", args: ARGS } } } };
    const { sessionId } = await call(base, "POST", "/session", caps);
    const page = new Page(base, sessionId);
    await page.cmd("POST", "/timeouts", { script: 15000 });
    await page.cmd("POST", "/url", { url });
    return page;
  }
  constructor(base, id) { this.base = base; this.id = id; }
  cmd(method, route, body) { return call(this.base, method, `/session/${this.id}${route}`, body); }
  /** Runs `body` (async JS) in the page and returns its result. */
  eval(body, ...args) {
    return this.cmd("POST", "/execute/async", {
      script: `const done = arguments[arguments.length - 1];
               (async (...args) => { ${body} })(...arguments).then(done, (e) => done({ error: String(e) }));`,
      args,
    });
  }
  /** Resolves once `predicate` (a JS expression) holds, re-checked on every DOM change. */
  async until(predicate, what) {
    const r = await this.eval(`
      const ok = () => { try { return ${predicate}; } catch { return false; } };
      if (ok()) return true;
      return await new Promise((resolve) => {
        const obs = new MutationObserver(() => { if (ok()) { obs.disconnect(); resolve(true); } });
        obs.observe(document.documentElement, { subtree: true, childList: true, characterData: true, attributes: true });
        setTimeout(() => { obs.disconnect(); resolve(ok()); }, 12000);
      });`);
    if (r !== true) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(r)}`);
  }
  async screenshot(file) {
    writeFileSync(file, Buffer.from(await this.cmd("GET", "/screenshot"), "base64"));
    console.log(`wrote ${file}`);
  }
  close() { return this.cmd("DELETE", ""); }
}

export async function checkDemo(pageUrl, outDir) {
  const driver = await startDriver();
  try {
    const join = pageUrl.includes("?") ? "&" : "?";
    const a = await Page.open(driver.base, `${pageUrl}${join}node=demo-alice&name=Alice`);
    const b = await Page.open(driver.base, `${pageUrl}${join}node=demo-bob&name=Bob`);
    for (const p of [a, b]) await p.until(`document.body.dataset.ready === "true"`, "the page to connect");
    // The page runs the client from the installed npm package, the .wasm served as such.
    const loaded = await a.eval(`return performance.getEntriesByType("resource").map((e) => e.name);`);
    for (const file of ["node_modules/syncmux/syncmux.js", "node_modules/syncmux/syncmux_bg.wasm"]) {
      if (!loaded.some((name) => name.endsWith(file))) throw new Error(`the page did not load ${file}: ${loaded}`);
    }
    const wasmType = await a.eval(`return (await fetch("node_modules/syncmux/syncmux_bg.wasm")).headers.get("content-type");`);
    if (wasmType !== "application/wasm") throw new Error(`the .wasm is served as ${wasmType}`);

    // Each page shows the other's presence.
    await a.until(`!!document.querySelector('#people li[data-node="demo-bob"]')`, "Bob in Alice's page");
    await b.until(`!!document.querySelector('#people li[data-node="demo-alice"]')`, "Alice in Bob's page");

    // An item added in Alice's page appears in Bob's.
    await a.eval(`document.getElementById("new-item").value = "Buy oat milk";
                  document.getElementById("add").click();`);
    await b.until(`[...document.querySelectorAll("#items .text")].some((e) => e.textContent === "Buy oat milk")`,
      "Alice's item in Bob's page");

    // Bob starts editing it: Alice sees who edits what.
    await b.eval(`[...document.querySelectorAll("#items .text")].find((e) => e.textContent === "Buy oat milk").click();`);
    await a.until(`document.querySelector("#items li.edited .editor")?.textContent === "Bob is editing"`,
      "Bob's editing badge in Alice's page");
    await a.eval(`document.getElementById("new-item").value = "Call the plumber";
                  document.getElementById("add").click();`);
    await b.until(`[...document.querySelectorAll("#items .text")].some((e) => e.textContent === "Call the plumber")`,
      "Alice's second item in Bob's page");

    await a.screenshot(path.join(outDir, "browser-demo-a.png"));
    await b.screenshot(path.join(outDir, "browser-demo-b.png"));
    await a.close();
    await b.close();
    console.log("demo end-to-end check passed");
  } finally {
    driver.child.kill();
  }
}
