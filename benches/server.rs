//! Server hot paths: routing one change to 1, 100 and 10 000 subscribers (cost per delivery
//! should stay flat), 100 subscribers among 100 000 idle sessions versus alone (routing must
//! not depend on idle sessions), and heap bytes per idle session.
//!
//! `cargo bench --bench server -- --warm-up-time 1 --measurement-time 3` runs the criterion
//! groups, then prints a summary with the ratios and the heap figure.

use std::alloc::System;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use syncmux::payload::Cursor;
use syncmux::{Handshake, HandshakeOutcome, PushAnswer, ServerTransmit, SessionId};
use syncmux::{Instant, Server, ServerConfig, ServerEvent};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Fixture {
    server: Server,
    pusher: SessionId,
    push: Bytes,
    seq: u64,
}

fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.max_sessions = 0;
    config.rate_limit_burst = 0;
    config
}

fn open(server: &mut Server, node: &str) -> SessionId {
    let hs = Handshake::new("/", format!("node_id={node}"));
    match server.handle_handshake(Instant::ZERO, &hs) {
        HandshakeOutcome::Accept { session, .. } => session,
        other => panic!("{other:?}"),
    }
}

/// `subscribers` sessions on table `docs`, spread evenly among `idle` sessions that
/// subscribe to nothing, and one pusher.
fn fixture(subscribers: usize, idle: usize) -> Fixture {
    let mut server = Server::new(config()).expect("valid config");
    let total = subscribers + idle;
    let every = total / subscribers.max(1);
    let subscribe = Bytes::from_static(br#"{"type":"subscribe","payload":{"tables":["docs"]}}"#);
    let mut subscribed = 0;
    for i in 0..total {
        let session = open(&mut server, &format!("n{i}"));
        if subscribed < subscribers && i % every == 0 {
            server.handle_message(Instant::ZERO, session, subscribe.clone());
            subscribed += 1;
        }
        while server.poll_event().is_some() {}
    }
    assert_eq!(subscribed, subscribers);
    let pusher = open(&mut server, "pusher");
    while server.poll_event().is_some() {}
    while server.poll_transmit().is_some() {}
    let push = Bytes::from_static(
        br#"{"type":"push_request","id":"p","payload":{"node_id":"pusher","changes":[{"table":"docs","pk":"row-1","field":"title","crdt_type":"lww","hlc":{"ts":1706000000000000000,"c":0,"node":"pusher"},"node_id":"pusher","value":"hello world"}]}}"#,
    );
    Fixture {
        server,
        pusher,
        push,
        seq: 0,
    }
}

/// One push, answered, routed and drained; returns the deliveries.
fn round(f: &mut Fixture) -> usize {
    let now = Instant::ZERO;
    f.server.handle_message(now, f.pusher, f.push.clone());
    let Some(ServerEvent::Push {
        request, changes, ..
    }) = f.server.poll_event()
    else {
        panic!("no push event")
    };
    f.seq += 1;
    let record = changes.into_iter().next().expect("one change");
    let answer = PushAnswer {
        latest_hlc: record.hlc.clone(),
        accepted: vec![(Cursor::new(1, f.seq), record)],
        head: Cursor::new(1, f.seq),
    };
    f.server.answer_push(now, request, Ok(answer));
    let mut deliveries = 0;
    while let Some(t) = f.server.poll_transmit() {
        if let ServerTransmit::Frame { session, bytes } = t {
            f.server.handle_sent(now, session, bytes.len());
            if session != f.pusher {
                deliveries += 1;
            }
            black_box(bytes);
        }
    }
    deliveries
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_one_change");
    for n in [1usize, 100, 10_000] {
        let mut f = fixture(n, 0);
        assert_eq!(round(&mut f), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| b.iter(|| round(&mut f)));
    }
    group.finish();
}

fn idle(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_100_subscribers");
    group.throughput(Throughput::Elements(100));
    let mut alone = fixture(100, 0);
    group.bench_function("alone", |b| b.iter(|| round(&mut alone)));
    let mut crowded = fixture(100, 100_000);
    assert_eq!(round(&mut crowded), 100);
    group.bench_function("among_100000_idle", |b| b.iter(|| round(&mut crowded)));
    group.finish();
}

/// Mean nanoseconds per round over `rounds` rounds, after a warm-up.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time; the core never does
fn time_rounds(f: &mut Fixture, rounds: usize) -> f64 {
    for _ in 0..rounds / 10 + 1 {
        round(f);
    }
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        black_box(round(f));
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

fn heap_per_idle_session(n: usize) -> f64 {
    let mut server = Server::new(config()).expect("valid config");
    // Warm the maps so the measurement sees sessions, not first-use growth.
    open(&mut server, "warm");
    while server.poll_event().is_some() {}
    let region = Region::new(GLOBAL);
    for i in 0..n {
        open(&mut server, &format!("idle-{i:08}"));
        while server.poll_event().is_some() {}
    }
    let stats = region.change();
    let net = stats.bytes_allocated as f64 - stats.bytes_deallocated as f64
        + stats.bytes_reallocated as f64;
    black_box(&server);
    net / n as f64
}

fn summary() {
    println!("\n== server summary ==");
    let per_delivery = |subs: usize, rounds: usize| {
        let mut f = fixture(subs, 0);
        time_rounds(&mut f, rounds) / subs as f64
    };
    let one = per_delivery(1, 20_000);
    let hundred = per_delivery(100, 2_000);
    let ten_k = per_delivery(10_000, 40);
    println!("route one change: per delivery  1: {one:.1} ns  100: {hundred:.1} ns  10000: {ten_k:.1} ns");
    println!("ratio per delivery 10000/100: {:.2}", ten_k / hundred);
    let mut alone = fixture(100, 0);
    let mut crowded = fixture(100, 100_000);
    let a = time_rounds(&mut alone, 2_000);
    let b = time_rounds(&mut crowded, 2_000);
    println!(
        "100 subscribers: alone {a:.0} ns, among 100000 idle {b:.0} ns, ratio {:.2} (goal <= 1.2)",
        b / a
    );
    let heap = heap_per_idle_session(100_000);
    println!("heap per idle session: {heap:.0} bytes (goal <= 2048)");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    routing(&mut c);
    idle(&mut c);
    c.final_summary();
    // Only under `cargo bench` (criterion's `--bench`), not when tests run the bench target.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
