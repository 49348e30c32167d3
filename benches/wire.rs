//! The envelope codec against a full `serde_json::Value` parse of the same bytes.
//!
//! Decoding reads only the envelope and keeps the payload raw (the crate docs), so it
//! should beat parsing the whole frame into a `Value` by a wide margin on a large batch; each
//! group measures that baseline in the same run so the ratio can be read off directly.
//!
//! Run: `cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use syncmux::payload::{ChangeRecord, Hlc, PushRequest, RawJson};
use syncmux::wire::{DecodeLimits, Frame, FrameId, MessageType};

/// A realistic record: an LWW field with a string value, every third one with an extra field
/// the transport does not know.
fn record(i: usize) -> ChangeRecord {
    let mut record = ChangeRecord::new(
        "documents",
        format!("doc-{:06}", i / 4),
        ["title", "body", "owner", "tags"][i % 4],
        "lww",
        Hlc::new(
            1_706_000_000_000_000_000 + i as i64 * 1_000,
            (i % 3) as u32,
            "node-7f3a",
        ),
        "node-7f3a",
    )
    .with_value(
        RawJson::from_serialize(&format!("value number {i}, with \"quotes\" and ünïcödé"))
            .expect("a string serialises"),
    );
    if i.is_multiple_of(3) {
        record.extra.push((
            "x-trace".into(),
            RawJson::from_string(format!(r#"{{"span":{i},"tags":["a","b"]}}"#))
                .expect("valid JSON"),
        ));
    }
    record
}

fn batch(n: usize) -> Vec<ChangeRecord> {
    (0..n).map(record).collect()
}

fn bench_decode(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let push = Frame::encode(
        MessageType::PushRequest,
        Some(&FrameId::new("req-42")),
        &PushRequest {
            changes: batch(1),
            node_id: "node-7f3a".into(),
        },
    )
    .expect("encodes");
    let changes = Frame::encode_with_cursor(MessageType::Changes, Some("3.1000"), &batch(1000))
        .expect("encodes");

    for (name, bytes) in [("push_request", push), ("changes_1000", changes)] {
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("envelope", |b| {
            b.iter(|| Frame::decode(black_box(bytes.clone()), &limits).expect("decodes"))
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| {
                serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).expect("parses")
            })
        });
        group.finish();
    }
}

fn bench_encode(c: &mut Criterion) {
    let records = batch(1000);
    let len = Frame::encode_with_cursor(MessageType::Changes, Some("3.1000"), &records)
        .expect("encodes")
        .len();
    let mut group = c.benchmark_group("encode/changes_1000");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("encode_with_cursor", |b| {
        b.iter(|| {
            Frame::encode_with_cursor(MessageType::Changes, Some("3.1000"), black_box(&records))
                .expect("encodes")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
