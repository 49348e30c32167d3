//! The core's tests, in one binary (as quinn-proto's and rustls' are): one module per
//! subject, the shared harnesses beside them. `cargo test --test core NAME` runs the tests
//! whose path contains NAME (a module, `sim_network`, or one test).
//!
//! - Codec and protocol reference: `wire_props`, `fixtures`, `protocol_doc`,
//!   `protocol_walkthrough`.
//! - Client state machine: `client`, `client_props` (harness `client_support`).
//! - Server state machine: `server_*` (harness `server_util`), `since_replay`.
//! - Store: `store`, `store_props` (properties in `store_properties`, which the durable store's
//!   crate runs too).
//! - Simulations in virtual time (harness `sim`): `sim_*`, `cursor_*`, and the OT profile's
//!   `ot_sim`; the OT profile's state machines: `ot_*`.

mod client_support;
mod server_util;
mod sim;
mod store_properties;

mod client;
mod client_props;
mod cursor_props;
mod cursor_resume;
mod fixtures;
mod ot_client;
mod ot_server;
mod ot_shared;
mod ot_sim;
mod ot_text_props;
mod protocol_doc;
mod protocol_walkthrough;
mod selective_sync;
mod server_handshake;
mod server_limits;
mod server_log;
mod server_presence_rooms;
mod server_prop;
mod server_routing;
mod server_shared_presence;
mod sim_converge;
mod sim_network;
mod sim_slow_consumer;
mod since_replay;
mod store;
mod store_props;
mod wire_props;
