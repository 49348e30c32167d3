//! Adapters (DESIGN.md section 1, layer 6): thin bindings of the state machines to a runtime,
//! one cargo feature each. They own sockets, timers and tasks, and nothing else.

#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub mod wasm;
