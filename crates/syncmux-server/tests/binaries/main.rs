//! `syncmux-server` and `syncmux-cli` as their users run them, in one binary: each module
//! starts the binaries Cargo built for this package (`example_util`), some with a
//! `redis-server` (`redis_util`, shared with syncmux-redis) or with Node and the npm clients
//! (`tests/node`).
//!
//! `cargo test -p syncmux-server --test binaries NAME` runs the tests whose path contains NAME.

mod example_util;
// One Redis helper for every crate that starts a redis-server (syncmux-redis owns it).
#[path = "../../../syncmux-redis/tests/redis_util/mod.rs"]
mod redis_util;

mod adapters_ot_client;
mod cli;
mod example_client;
mod example_durable;
mod example_redis;
mod example_server;
mod fallback;
mod interop_node;
mod ot_http;
mod ot_interop_node;
mod readme_tour;
mod redis_ot;
mod server_edges;
mod sse;
