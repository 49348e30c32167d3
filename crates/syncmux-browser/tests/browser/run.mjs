#!/usr/bin/env node
// Browser tests against the real example server (run by .ci/run):
//
//     node crates/syncmux-browser/tests/browser/run.mjs
//
// 1. builds and starts `syncmux-server` on port 0 (serving the demo with --static), reads
//    the address it prints, and starts a native `syncmux-cli` that answers every change
//    pushed to table `ctl` by pushing a record, from node `native-cli`, to the table named by
//    that change's pk (how tests/browser.rs gets a change pushed by a native client);
// 2. runs tests/browser.rs with wasm-bindgen-test in headless Chromium (chromedriver), the
//    server URL baked in at compile time as SYNCMUX_TEST_URL;
// 3. builds the two packages and the demo (web/build.sh) and checks the demo end to end with two headless
//    Chromium sessions driven over WebDriver (tests/browser/demo.mjs), which writes
//    target/browser-demo-*.png;
// 4. checks the OT profile over HTTP + SSE with the npm `@open-ot/transport-http-sse` in
//    headless Chromium, on servers of its own, two of them on one Redis (tests/browser/ot_sse.mjs).
//
// No dependencies beyond Node 18+, cargo, chromium, chromedriver, wasm-bindgen-cli, redis-server
// and the npm packages of crates/syncmux-server/tests/node (`npm install --prefix` there).
import { spawn } from "node:child_process";
import http from "node:http";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { existsSync, readFileSync } from "node:fs";
import { checkDemo } from "./demo.mjs";
import { checkOtSse } from "./ot_sse.mjs";

// The workspace (where cargo runs and target/ is) and this crate.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const crate = path.join(root, "crates/syncmux-browser");
const MAX_FRAME = 65536; // tests/browser.rs relies on it
const children = [];
process.on("exit", () => children.forEach((c) => c.kill()));

/** Runs a command to completion. Not spawnSync: the native helper below answers from this
 *  process's event loop while the browser tests run. */
function run(cmd, args, env = {}) {
  const child = spawn(cmd, args, { cwd: root, stdio: "inherit", env: { ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(" ")} failed (${code})`)));
  });
}

function start(cmd, args, input) {
  const child = spawn(cmd, args, { cwd: root, stdio: [input ? "pipe" : "ignore", "pipe", "inherit"] });
  children.push(child);
  return child;
}

/** The first stdout line matching `re`, or a failure when the process exits first. */
function waitFor(child, re) {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = line.match(re);
      if (m) resolve(m);
    });
    child.on("exit", (code) => reject(new Error(`process exited (${code}) before printing ${re}`)));
  });
}

const bin = (name) => path.join(root, "target/debug", name);

await run("cargo", ["build", "-p", "syncmux-server"]);
const server = start(bin("syncmux-server"), [
  "--listen", "127.0.0.1:0",
  "--max-frame", String(MAX_FRAME),
  "--static", path.join(crate, "web"),
  // The test page is served by wasm-bindgen-test-runner, another origin: the SSE fallback's
  // requests need the server's CORS answers.
  "--allowed-origins", "*",
]);
const [, url] = await waitFor(server, /listening on (ws:\/\/\S+)/);
console.log(`server at ${url}`);

// A proxy in front of the server that refuses every WebSocket upgrade, as some corporate
// proxies do, and passes plain HTTP on (streamed): the fallback's test dials through it.
const upstream = new URL(url.replace(/^ws/, "http"));
const proxy = http.createServer((req, res) => {
  const forward = http.request(
    { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
    (answer) => { res.writeHead(answer.statusCode, answer.headers); answer.pipe(res); },
  );
  forward.on("error", () => res.destroy());
  req.pipe(forward);
});
proxy.on("upgrade", (req, socket) => socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"));
await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
const proxied = `ws://127.0.0.1:${proxy.address().port}/sync/ws`;
console.log(`WebSocket-blocking proxy at ${proxied}`);

// The native helper: subscribe to `ctl`, answer each change with a push to its pk's table.
const watcher = start(bin("syncmux-cli"), ["--url", url, "--node-id", "native-cli", "subscribe", "ctl"]);
createInterface({ input: watcher.stdout }).on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; }
  for (const change of findChanges(msg)) {
    const record = {
      table: change.pk, pk: "1", field: "v", crdt_type: "lww",
      hlc: `${BigInt(Date.now()) * 1000000n}:0:native-cli`, node_id: "native-cli", value: "from native",
    };
    const push = start(bin("syncmux-cli"), ["--url", url, "--node-id", "native-cli", "push", "-"], true);
    push.stdin.end(JSON.stringify([record]));
  }
});
await waitFor(watcher, /connected|subscribe|ack/i).catch(() => {});

/** build.sh made two npm packages (syncmux and syncmux-ot: the crate's version, ES modules with
 *  their types and .wasm), each exporting its client and not the other's, and installed the
 *  first where the demo page imports it from. */
function checkPackage() {
  const cargo = readFileSync(path.join(root, "Cargo.toml"), "utf8"); // the workspace version
  const version = cargo.match(/^version = "(.*)"$/m)[1];
  const packages = [
    ["web/pkg", "syncmux", "syncmux", "SyncClient", "OtClient"],
    ["web/node_modules/syncmux", "syncmux", "syncmux", "SyncClient", "OtClient"],
    ["web/pkg-ot", "syncmux-ot", "syncmux_ot", "OtClient", "SyncClient"],
  ];
  for (const [dir, name, module, exported, absent] of packages) {
    const pkg = JSON.parse(readFileSync(path.join(crate, dir, "package.json"), "utf8"));
    const want = { name, version, type: "module", main: `${module}.js`, types: `${module}.d.ts` };
    for (const [key, value] of Object.entries(want)) {
      if (pkg[key] !== value) throw new Error(`${dir}/package.json: ${key} is ${pkg[key]}, not ${value}`);
    }
    for (const file of pkg.files) {
      if (!existsSync(path.join(crate, dir, file))) throw new Error(`${dir}: ${file} is missing`);
    }
    const glue = readFileSync(path.join(crate, dir, `${module}.js`), "utf8");
    if (!new RegExp(`export class ${exported}\\b`).test(glue)) throw new Error(`${dir}: no ${exported}`);
    if (new RegExp(`export class ${absent}\\b`).test(glue)) throw new Error(`${dir}: has ${absent} too`);
  }
  console.log(`npm packages syncmux and syncmux-ot ${version} built, syncmux installed`);
}

function* findChanges(value) {
  if (Array.isArray(value)) for (const v of value) yield* findChanges(v);
  else if (value && typeof value === "object") {
    if (value.table === "ctl" && typeof value.pk === "string") yield value;
    else for (const v of Object.values(value)) yield* findChanges(v);
  }
}

await run("cargo", ["test", "-p", "syncmux-browser", "--target", "wasm32-unknown-unknown", "--test", "browser"], {
  SYNCMUX_TEST_URL: url,
  SYNCMUX_TEST_PROXY_URL: proxied,
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER: "wasm-bindgen-test-runner",
  CHROMEDRIVER: process.env.CHROMEDRIVER ?? "/usr/bin/chromedriver",
  WASM_BINDGEN_TEST_WEBDRIVER_JSON: path.join(crate, "tests/browser/webdriver.json"),
});

await run(path.join(crate, "web/build.sh"), []);
checkPackage();
const page = url.replace(/^ws/, "http").replace(/\/sync\/ws$/, "/");
await checkDemo(page, path.join(root, "target"));
await checkOtSse(bin("syncmux-server"));
console.log("browser tests passed");
process.exit(0);
