#!/usr/bin/env node
// Startup of the browser sync client in headless Chromium: the time from importing the
// package's JavaScript to `init()` resolved (fetch, compile and instantiate the .wasm), and from
// there to `connect()` resolved (a WebSocket open against syncmux-server), for each package
// given, alternating, each run in a fresh browser session (a cold cache, as a first visit):
//
//     node crates/syncmux-browser/tests/browser/startup.mjs [--runs N] NAME=PKG_DIR ...
//     # e.g. before=/tmp/old-pkg after=crates/syncmux-browser/web/pkg
//
// PKG_DIR holds syncmux.js and syncmux_bg.wasm (what web/build.sh writes to web/pkg). Needs
// target/debug/syncmux-server (cargo build -p syncmux-server), chromium and chromedriver.
// Prints the median and the spread of each phase per package. Not a test: a measurement.
import { spawn } from "node:child_process";
import { cpSync, mkdtempSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { Page, startDriver } from "./demo.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const args = process.argv.slice(2);
let runs = 15;
const packages = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--runs") runs = Number(args[++i]);
  else {
    const [name, dir] = args[i].split("=");
    if (!dir) throw new Error(`expected NAME=PKG_DIR, got ${args[i]}`);
    packages.push([name, path.resolve(dir)]);
  }
}
if (packages.length === 0) throw new Error("usage: startup.mjs [--runs N] NAME=PKG_DIR ...");

// One directory served by the server: a page per package, and the package next to it.
const site = mkdtempSync(path.join(tmpdir(), "syncmux-startup-"));
for (const [name, dir] of packages) {
  cpSync(dir, path.join(site, name), { recursive: true });
}
writeFileSync(path.join(site, "index.html"), "<!doctype html><title>startup</title>");

const server = spawn(path.join(root, "target/debug/syncmux-server"),
  ["--listen", "127.0.0.1:0", "--static", site], { stdio: ["ignore", "pipe", "inherit"] });
process.on("exit", () => server.kill());
const url = await new Promise((resolve, reject) => {
  createInterface({ input: server.stdout }).on("line", (line) => {
    const m = line.match(/listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
  server.on("exit", (code) => reject(new Error(`syncmux-server exited (${code})`)));
});
const page = url.replace(/^ws/, "http").replace(/\/sync\/ws$/, "/");

const driver = await startDriver();
const times = Object.fromEntries(packages.map(([name]) => [name, { init: [], connect: [] }]));
try {
  for (let run = 0; run < runs; run++) {
    for (const [name] of packages) {
      const p = await Page.open(driver.base, page);
      const r = await p.eval(`
        const t0 = performance.now();
        const m = await import("./${name}/syncmux.js");
        await m.default();
        const t1 = performance.now();
        const client = new m.SyncClient(${JSON.stringify(url)}, { nodeId: "startup-${run}" });
        await client.connect();
        const t2 = performance.now();
        client.disconnect();
        return { init: t1 - t0, connect: t2 - t1 };`);
      await p.close();
      if (r.error) throw new Error(`${name}: ${r.error}`);
      times[name].init.push(r.init);
      times[name].connect.push(r.connect);
    }
  }
} finally {
  driver.child.kill();
}

const q = (xs, f) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(f * xs.length))];
const fmt = (xs) => `median ${q(xs, 0.5).toFixed(1)} ms (p10 ${q(xs, 0.1).toFixed(1)}, p90 ${q(xs, 0.9).toFixed(1)})`;
console.log(`startup in headless Chromium, ${runs} cold runs each, alternating:`);
for (const [name] of packages) {
  const { init, connect } = times[name];
  const total = init.map((t, i) => t + connect[i]);
  console.log(`${name}: init ${fmt(init)}; connect ${fmt(connect)}; both ${fmt(total)}`);
}
process.exit(0);
