//! The browser build of syncmux: a `cdylib` exporting the JavaScript `SyncClient` class, which
//! `examples/browser/build.sh` turns into `examples/browser/pkg/` (JavaScript glue, `.wasm` and
//! TypeScript definitions) with `wasm-bindgen --target web`.
//!
//! On other targets it is empty: the adapter exists only on `wasm32`.

#[cfg(target_arch = "wasm32")]
pub use syncmux::adapters::wasm::BrowserClient;
