//! Helpers for driving a `Client` in virtual time with hand-made server frames.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::time::Duration;

use bytes::Bytes;
use syncmux::Instant;
use syncmux::{Client, ClientConfig, ClientEvent, ClientTransmit};

pub const URL: &str = "ws://sync.test/ws";
pub const NODE: &str = "n1";

/// The defaults, with a fixed seed.
pub fn config() -> ClientConfig {
    let mut config = ClientConfig::new(URL, NODE);
    config.seed = 7;
    config
}

pub fn t(secs: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

pub fn ms(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

/// A client that connected at `now`, with its outputs drained.
pub fn open(config: ClientConfig, now: Instant) -> Client {
    let mut client = Client::new(config).expect("valid config");
    client.connect(now);
    assert!(matches!(
        client.poll_transmit(),
        Some(ClientTransmit::Connect(_))
    ));
    client.handle_connected(now, Some("syncmux.v1"));
    assert_eq!(drain_events(&mut client), [ClientEvent::Connected]);
    assert_eq!(drain(&mut client), Vec::<ClientTransmit>::new());
    client
}

pub fn drain(client: &mut Client) -> Vec<ClientTransmit> {
    std::iter::from_fn(|| client.poll_transmit()).collect()
}

/// Drains the transmits, which must all be frames, as strings.
pub fn frames(client: &mut Client) -> Vec<String> {
    drain(client)
        .into_iter()
        .map(|t| match t {
            ClientTransmit::Frame(bytes) => {
                String::from_utf8(bytes.to_vec()).expect("frames are UTF-8")
            }
            other => panic!("expected a frame, got {other:?}"),
        })
        .collect()
}

pub fn drain_events(client: &mut Client) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

pub fn recv(client: &mut Client, now: Instant, json: &str) {
    client.handle_message(now, Bytes::copy_from_slice(json.as_bytes()));
}

/// Lets the reconnect timer fire and the dial succeed; returns when.
pub fn reconnect(client: &mut Client) -> Instant {
    let at = client.poll_timeout().expect("a reconnect timer");
    client.handle_timeout(at);
    let _ = drain(client);
    client.handle_connected(at, None);
    at
}

/// Fires the timer due next, asserting it is due at `expected`.
pub fn fire(client: &mut Client, expected: Instant) {
    assert_eq!(client.poll_timeout(), Some(expected));
    client.handle_timeout(expected);
}
