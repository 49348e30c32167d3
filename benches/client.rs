//! Client state machine costs: one request round trip (command → encode → reply decode →
//! event) and routing a 100-change batch, each beside a baseline of the bare codec work, plus
//! the heap held by an idle open client and per request in flight (counting allocator).

use std::alloc::System;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use syncmux::payload::{ChangeRecord, PullRequest, PullResponse, Subscribe};
use syncmux::wire::{DecodeLimits, Frame, FrameId, MessageType};
use syncmux::Instant;
use syncmux::{Client, ClientConfig, ClientEvent, ClientTransmit};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn open_client() -> Client {
    let mut client =
        Client::new(ClientConfig::new("ws://bench/ws", "node-1")).expect("valid config");
    client.connect(Instant::ZERO);
    client.handle_connected(Instant::ZERO, Some("syncmux.v1"));
    while client.poll_transmit().is_some() {}
    while client.poll_event().is_some() {}
    client
}

const REPLY_HEAD: &str = r#"{"type":"pull_response","id":""#;
const REPLY_TAIL: &str =
    r#"","payload":{"changes":[],"latest_hlc":{"ts":1,"c":0,"node":"s"},"cursor":"1.1"}}"#;

fn reply(id: u64) -> Bytes {
    Bytes::from(format!("{REPLY_HEAD}{id}{REPLY_TAIL}"))
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("client/round_trip");
    group.bench_function("baseline_codec_only", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            let request = PullRequest {
                tables: vec!["docs".into()],
                node_id: Some("node-1".into()),
                ..PullRequest::default()
            };
            let frame = Frame::encode(
                MessageType::PullRequest,
                Some(&FrameId::new(id.to_string())),
                &request,
            )
            .expect("encodes");
            black_box(frame);
            let reply = Frame::decode(reply(id), &DecodeLimits::default()).expect("decodes");
            black_box(reply.payload::<PullResponse>().expect("parses"))
        })
    });
    group.bench_function("client", |b| {
        let mut client = open_client();
        b.iter(|| {
            let id = client
                .pull(Instant::ZERO, PullRequest::new(["docs"]))
                .expect("accepted");
            let Some(ClientTransmit::Frame(frame)) = client.poll_transmit() else {
                panic!("no frame")
            };
            black_box(frame);
            client.handle_message(Instant::ZERO, reply(id.get()));
            black_box(client.poll_event().expect("the response"))
        })
    });
    group.finish();
}

fn batch() -> Bytes {
    let records: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"table":"t{}","pk":"row-{i}","field":"title","crdt_type":"lww","hlc":{{"ts":{},"c":0,"node":"n2"}},"node_id":"n2","value":"v{i}"}}"#,
                i % 4,
                1_706_000_000_000_000_000i64 + i
            )
        })
        .collect();
    Bytes::from(format!(
        r#"{{"type":"changes","cursor":"1.100","payload":[{}]}}"#,
        records.join(",")
    ))
}

fn routing(c: &mut Criterion) {
    let frame = batch();
    let mut group = c.benchmark_group("client/route_100_changes");
    group.bench_function("baseline_codec_only", |b| {
        b.iter(|| {
            let decoded = Frame::decode(frame.clone(), &DecodeLimits::default()).expect("decodes");
            black_box(decoded.payload::<Vec<ChangeRecord>>().expect("parses"))
        })
    });
    group.bench_function("client", |b| {
        let mut client = open_client();
        client
            .subscribe(Instant::ZERO, Subscribe::new(["t0", "t1", "t2", "t3"]))
            .expect("accepted");
        while client.poll_transmit().is_some() {}
        b.iter(|| {
            client.handle_message(Instant::ZERO, frame.clone());
            let event = client.poll_event().expect("the changes");
            assert!(matches!(event, ClientEvent::Changes { .. }));
            black_box(event)
        })
    });
    group.finish();
}

/// Net heap bytes held across `f`'s result.
fn net_bytes<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let region = Region::new(GLOBAL);
    let value = f();
    let s = region.change();
    let net = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    (value, net)
}

fn heap(_: &mut Criterion) {
    let (client, idle) = net_bytes(open_client);
    drop(client);
    let mut client = open_client();
    const N: usize = 200; // under the default max_in_flight (256)
    let ((), in_flight) = net_bytes(|| {
        for _ in 0..N {
            client
                .pull(Instant::ZERO, PullRequest::new(["docs"]))
                .expect("accepted");
            // The adapter sends the frame; the client keeps its own handle for a resend.
            while client.poll_transmit().is_some() {}
        }
    });
    println!(
        "heap: idle open client {idle} bytes; per in-flight pull request {} bytes",
        in_flight / N as isize
    );
}

criterion_group!(benches, heap, round_trip, routing);
criterion_main!(benches);
