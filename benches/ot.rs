//! OT hot paths: transforming an op (per component) against the cost of applying the same
//! op, the baseline measured in the same run; and the server's price for a stale op, per
//! logged op it is transformed against.
//!
//! `cargo bench --bench ot -- --warm-up-time 1 --measurement-time 3` runs the criterion
//! groups, then prints a summary with the ratios.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use syncmux::ot::{OtHandshakeOutcome, OtServer, OtServerConfig, OtTransmit, Side, TextOp};
use syncmux::Handshake;
use syncmux::Instant;

/// Two concurrent ops of `n` components each on one document, interleaving so that every
/// component of one meets components of the other; and a document both apply to.
fn ops(n: usize) -> (TextOp, TextOp, String) {
    let mut a = TextOp::new();
    let mut b = TextOp::new();
    let (mut span_a, mut span_b) = (0, 0);
    for i in 0..n {
        a = match i % 3 {
            0 => {
                span_a += 5;
                a.retain(5)
            }
            1 => a.insert("abc"),
            _ => {
                span_a += 2;
                a.delete(2)
            }
        };
        b = match i % 3 {
            0 => {
                span_b += 3;
                b.retain(3)
            }
            1 => {
                span_b += 1;
                b.delete(1)
            }
            _ => b.insert("yz"),
        };
    }
    let doc = "x".repeat(span_a.max(span_b) as usize);
    (a, b, doc)
}

fn transform(c: &mut Criterion) {
    let mut group = c.benchmark_group("ot_transform_vs_apply");
    for n in [10usize, 100, 1000] {
        let (a, b, doc) = ops(n);
        assert!(a.apply(&doc).is_ok() && b.apply(&doc).is_ok());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("apply", n), |bench| {
            bench.iter(|| black_box(a.apply(black_box(&doc))))
        });
        group.bench_function(BenchmarkId::new("transform", n), |bench| {
            bench.iter(|| black_box(a.transform(black_box(&b), Side::Right)))
        });
    }
    group.finish();
}

/// A server whose `doc-1` has `history` ops logged, and a session to send from.
struct Stale {
    server: OtServer,
    session: syncmux::ot::OtSessionId,
    /// The document's head revision.
    head: usize,
    /// How far behind the head each round's op is made.
    behind: usize,
}

fn stale(history: usize) -> Stale {
    let mut config = OtServerConfig::default();
    config.rate_limit_messages = 0;
    config.max_history = 0;
    config.max_history_bytes = 0;
    config.max_document_len = 0;
    let mut server = OtServer::new(config).expect("valid config");
    let OtHandshakeOutcome::Accept { session } =
        server.handle_handshake(Instant::ZERO, &Handshake::new("/ot", ""))
    else {
        panic!("refused")
    };
    let (op, _, doc) = ops(30);
    let seed = format!(r#"{{"type":"op","op":[{{"i":"{doc}"}}],"revision":0}}"#);
    server.handle_message(Instant::ZERO, session, Bytes::from(seed));
    for r in 1..=history {
        let frame = format!(r#"{{"type":"op","op":{},"revision":{r}}}"#, op.to_json());
        server.handle_message(Instant::ZERO, session, Bytes::from(frame));
    }
    drain(&mut server);
    Stale {
        server,
        session,
        head: history + 1,
        behind: history,
    }
}

fn drain(server: &mut OtServer) {
    while let Some(t) = server.poll_transmit() {
        if let OtTransmit::Frame { session, bytes } = t {
            server.handle_sent(Instant::ZERO, session, bytes.len());
        }
    }
    while server.poll_event().is_some() {}
}

/// One op made `behind` revisions ago: transformed against that many logged ops (30
/// components each), applied, acked.
fn round(s: &mut Stale) {
    let revision = s.head - s.behind;
    let frame = format!(r#"{{"type":"op","op":[{{"i":"!"}}],"revision":{revision}}}"#);
    s.server
        .handle_message(Instant::ZERO, s.session, Bytes::from(frame));
    s.head += 1;
    drain(&mut s.server);
}

fn stale_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("ot_server_op");
    // A fresh server for every round (its set-up untimed): rounds must not run against
    // the ops earlier rounds logged, nor on a document they made longer.
    for history in [0usize, 10, 100] {
        group.bench_function(BenchmarkId::new("behind", history), |bench| {
            bench.iter_batched_ref(|| stale(history), round, BatchSize::SmallInput)
        });
    }
    group.finish();
}

/// Mean nanoseconds per call of `f` over `rounds` calls, after a warm-up.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time; the core never does
fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..rounds / 10 + 1 {
        f();
    }
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

/// Mean nanoseconds of one round on each of `n` fresh servers `history` ops ahead.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time; the core never does
fn time_fresh(history: usize, n: usize) -> f64 {
    let mut fixtures: Vec<Stale> = (0..n).map(|_| stale(history)).collect();
    let start = std::time::Instant::now();
    for f in &mut fixtures {
        round(f);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn summary() {
    println!("\n== ot summary ==");
    for (n, rounds) in [(10usize, 200_000), (100, 20_000), (1000, 2_000)] {
        let (a, b, doc) = ops(n);
        let apply = time(rounds, || {
            black_box(a.apply(black_box(&doc)).ok());
        });
        let transform = time(rounds, || {
            black_box(a.transform(black_box(&b), Side::Right));
        });
        println!(
            "{n:>5} components: apply {:.1} ns/component, transform {:.1} ns/component, \
             ratio transform/apply {:.2}",
            apply / n as f64,
            transform / n as f64,
            transform / apply
        );
    }
    let at_head = time_fresh(0, 500);
    let behind_100 = time_fresh(100, 500);
    println!(
        "server op: at head {at_head:.0} ns, 100 ops behind {behind_100:.0} ns \
         ({:.0} ns per logged op transformed against)",
        (behind_100 - at_head) / 100.0
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    transform(&mut c);
    stale_ops(&mut c);
    c.final_summary();
    // Only under `cargo bench` (criterion's `--bench`), not when tests run the bench target.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
