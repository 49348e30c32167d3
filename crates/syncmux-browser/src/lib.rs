//! The browser client of syncmux (target `wasm32-unknown-unknown`): a JavaScript `SyncClient`
//! class over the browser's `WebSocket`, driving a [`syncmux::Client`], built as a `cdylib` that
//! `web/build.sh` turns into an npm package. On other targets the crate is empty.
//!
//! Two clients, two packages: feature `sync` is `SyncClient` (npm package `syncmux`), feature
//! `ot` is `OtClient` (`BrowserOtClient` in Rust, npm package `syncmux-ot`). `web/build.sh` builds
//! each alone, so an app downloads only the client it imports; the default (both) is for the
//! tests and the docs.
//!
//! It is close to the seed project's TypeScript client, so browser code written for that one
//! reads the same:
//!
//! ```js
//! // npm install crates/syncmux-browser/web/pkg   (the package web/build.sh builds)
//! import init, { SyncClient } from "syncmux";
//! await init();
//! const client = new SyncClient("wss://sync.example/sync/ws", { nodeId: "browser-1" });
//! client.on("change", ({ changes }) => store.apply(changes));
//! client.on("reconnecting", (attempt, delayMs) => console.log(`retry ${attempt} in ${delayMs} ms`));
//! await client.subscribe(["items"]);
//! const { changes, latest_hlc } = await client.pull(["items"]);
//! try {
//!   await client.push([{ table: "items", pk: "1", field: "text", crdt_type: "lww",
//!                        hlc: `${Date.now()}000000:0:browser-1`, node_id: "browser-1",
//!                        value: "milk" }]);
//! } catch (e) {
//!   console.error(e.code, e.message); // e.g. "FORBIDDEN"
//! }
//! ```
//!
//! The adapter only moves bytes and ticks: time is `performance.now()`, the backoff jitter is
//! seeded from `crypto.getRandomValues`, the one timer is a `setTimeout` re-armed at the
//! client's `poll_timeout`, and every decision (reconnecting, restoring subscriptions,
//! keepalive, timeouts) is the core's. Payloads keep their wire names (`node_id`,
//! `latest_hlc`); HLCs handed to JavaScript are strings `"<ts>:<c>:<node>"`, because 64-bit
//! nanoseconds do not fit a JavaScript number (pass them back as strings too).

#![cfg(target_arch = "wasm32")]

mod callbacks;
mod host;
#[cfg(feature = "ot")]
mod ot;
mod sse;
#[cfg(feature = "sync")]
mod sync;

#[cfg(feature = "ot")]
pub use ot::BrowserOtClient;
#[cfg(feature = "sync")]
pub use sync::BrowserClient;
