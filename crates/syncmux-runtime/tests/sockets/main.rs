//! The runtime glue over real loopback sockets, in one binary: one module per subject. The
//! tests that count the allocator's bytes (`adapters_leaks`, `adapters_memory`) are binaries
//! of their own, since a global allocator sees every test of its process.
//!
//! `cargo test -p syncmux-runtime --all-features --test sockets NAME` runs the tests whose
//! path contains NAME.

mod common;
// The core's simulation harness, for its fixtures (`sim::change`): the socket scenarios here
// mirror the simulated ones there.
// Only its fixtures are used here: its runners and macros are the core tests'.
#[path = "../../../../tests/core/sim/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod sim;

mod backend;
mod client;
mod client_io;
mod cursor_resume;
mod endpoints;
mod frames;
mod limits;
mod ot;
mod reconnect;
mod tls;
