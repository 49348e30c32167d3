//! Prints the headline figures of the criterion benches as one table.
//!
//! Run by `scripts/bench-report.sh`, which runs the benches first and saves their printed
//! lines; by hand: `cargo run -p syncmux-bench --bin bench_report -- target/criterion target/bench-report.log`.
//! It reads criterion's `*/new/benchmark.json` and `*/new/estimates.json` (mean time per
//! iteration) and the summary lines the `server`, `client` and `ot_e2e` benches print (heap
//! figures, OT server CPU per op), and the browser packages' sizes `web/build.sh` prints.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Mean nanoseconds per iteration, by criterion's full benchmark id ("group/function").
fn read_estimates(dir: &Path, out: &mut BTreeMap<String, f64>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let bench = path.join("benchmark.json");
            let estimates = path.join("estimates.json");
            if bench.exists() && estimates.exists() {
                let bench: Value = serde_json::from_str(&fs::read_to_string(bench)?)?;
                let est: Value = serde_json::from_str(&fs::read_to_string(estimates)?)?;
                if let (Some(id), Some(mean)) = (
                    bench["full_id"].as_str(),
                    est["mean"]["point_estimate"].as_f64(),
                ) {
                    out.insert(id.to_owned(), mean);
                }
            }
        } else {
            read_estimates(&path, out)?;
        }
    }
    Ok(())
}

/// The first number after `label` on a line of the benches' output.
fn printed(log: &str, label: &str) -> Option<f64> {
    log.lines().find_map(|line| {
        let rest = &line[line.find(label)? + label.len()..];
        let start = rest.find(|c: char| c.is_ascii_digit())?;
        let num: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse().ok()
    })
}

struct Table {
    rows: Vec<(String, String, String)>,
}

impl Table {
    fn row(&mut self, what: &str, value: Option<String>, note: &str) {
        let value = value.unwrap_or_else(|| "n/a (bench not run)".to_owned());
        self.rows.push((what.to_owned(), value, note.to_owned()));
    }
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else {
        format!("{v:.1} ns")
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/criterion".to_owned()));
    let log = args
        .next()
        .map(fs::read_to_string)
        .transpose()?
        .unwrap_or_default();
    let mut est = BTreeMap::new();
    if dir.exists() {
        read_estimates(&dir, &mut est)?;
    }
    let get = |id: &str| est.get(id).copied();
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);

    let mut t = Table { rows: Vec::new() };
    for name in ["push_request", "changes_1000"] {
        let envelope = get(&format!("decode/{name}/envelope"));
        let value = get(&format!("decode/{name}/serde_json_value"));
        t.row(
            &format!("decode {name}: envelope codec"),
            envelope.map(ns),
            "",
        );
        t.row(
            &format!("decode {name}: Value parse / codec"),
            ratio(value, envelope).map(|r| format!("{r:.2}x")),
            "how much faster the codec is than serde_json::Value",
        );
    }
    let per = |n: f64| get(&format!("route_one_change/{n}")).map(|t| t / n);
    let (one, hundred, ten_k) = (per(1.0), per(100.0), per(10_000.0));
    t.row("fan-out per delivery, 1 subscriber", one.map(ns), "");
    t.row("fan-out per delivery, 100 subscribers", hundred.map(ns), "");
    t.row(
        "fan-out per delivery, 10 000 subscribers",
        ten_k.map(ns),
        "",
    );
    t.row(
        "fan-out per delivery 10 000 / 100",
        ratio(ten_k, hundred).map(|r| format!("{r:.2}")),
        "~1: cost per delivery does not grow with the audience",
    );
    let alone = get("route_100_subscribers/alone");
    let crowded = get("route_100_subscribers/among_100000_idle");
    t.row("route to 100 subscribers, alone", alone.map(ns), "");
    t.row(
        "idle-session independence (among 100 000 idle / alone)",
        ratio(crowded, alone).map(|r| format!("{r:.2}")),
        "goal <= 1.2",
    );
    // The e2e bench prints interleaved medians per runtime; they are steadier than
    // criterion's separate means, and the ratios are what the goals are about.
    for runtime in ["current thread", "2 worker threads"] {
        let e2e_ratio = |label: &str| {
            printed(&log, &format!("[{runtime}] {label}")).map(|r| format!("{r:.2}x"))
        };
        t.row(
            &format!("pull through the tokio adapter / echo ({runtime})"),
            e2e_ratio("through the tokio adapter / echo, same bare client:"),
            "goal <= 1.3; feature tokio",
        );
        t.row(
            &format!("pull with SyncClient / echo ({runtime})"),
            e2e_ratio("SyncClient / echo:"),
            "adds the typed decode the echo never does",
        );
    }
    t.row(
        "fan-out to 1000 connections",
        printed(&log, "µs per change,").map(|r| format!("{r:.0} deliveries/s")),
        "real sockets, loopback",
    );
    let ot = |label: &str| printed(&log, label).map(|us| format!("{us:.1} µs"));
    t.row(
        "OT server CPU per acked op (5 clients)",
        ot("ot e2e syncmux:"),
        "syncmux-server /ot, real sockets",
    );
    t.row(
        "OT server CPU per acked op, 1 tokio worker",
        ot("ot e2e syncmux 1 worker:"),
        "no cross-thread wake-ups",
    );
    t.row(
        "OT op from its sender to the other clients, median",
        printed(&log, "ot e2e syncmux: an op reaches the other clients in")
            .map(|us| format!("{us:.0} µs")),
        "the 5 editors of the CPU row, broadcast delay 1 ms",
    );
    t.row(
        "OT op from its sender to the other clients, no broadcast delay",
        printed(
            &log,
            "ot e2e syncmux --ot-broadcast-delay 0: an op reaches the other clients in",
        )
        .map(|us| format!("{us:.0} µs")),
        "same run",
    );
    t.row(
        "OT CPU per op, no broadcast delay / default 1 ms",
        printed(
            &log,
            "ot e2e no broadcast delay / default, CPU per acked op:",
        )
        .map(|r| format!("{r:.2}x")),
        "same run; what holding ops for their member's next write saves",
    );
    t.row(
        "OT server CPU per acked op, 5 HTTP + SSE clients",
        ot("ot e2e syncmux sse clients:"),
        "GET /ot/events, a POST (and a connection) per op",
    );
    t.row(
        "OT CPU per op, HTTP + SSE / WebSocket clients",
        printed(&log, "ot e2e SSE / WebSocket clients, CPU per acked op:")
            .map(|r| format!("{r:.2}x")),
        "same run",
    );
    t.row(
        "OT Node seed-style server / syncmux, CPU per op",
        printed(&log, "ot e2e node / syncmux CPU per acked op:").map(|r| format!("{r:.1}x")),
        "tests/node/ot_seed_server.mjs in the same run",
    );
    t.row(
        "fan-out user CPU per delivery, syncmux / Node ws",
        printed(&log, "fanout 1000 syncmux/node user CPU per delivery:").map(|r| format!("{r:.2}")),
        "scripts/fanout-bench, 1000 subscribers; goal <= 0.33",
    );
    t.row(
        "fan-out CPU per delivery, Node ws / syncmux",
        printed(&log, "fanout 1000 node/syncmux CPU per delivery:").map(|r| format!("{r:.2}x")),
        "same run; goal >= 1.8x",
    );
    t.row(
        "pull round trip, HTTP POST /sync/pull / WebSocket pull_request",
        printed(&log, "http/websocket:").map(|r| format!("{r:.2}x")),
        "cargo bench --bench http: one syncmux-server, same run; a connection per HTTP pull",
    );
    t.row(
        "fan-out CPU per delivery, SSE streams / WebSocket subscribers",
        printed(&log, "fanout 1000 SSE/WebSocket CPU per delivery:").map(|r| format!("{r:.2}x")),
        "same server, same run (Grove's GET /sync/stream); goal <= 1.3x",
    );
    t.row(
        "fan-out idle RSS per connection",
        printed(&log, "fanout 1000 syncmux idle RSS per connection KiB:")
            .map(|k| format!("{k:.1} KiB")),
        "goal <= 8 KiB",
    );
    t.row(
        "heap per idle server session",
        printed(&log, "heap per idle session:").map(|b| format!("{b:.0} bytes")),
        "goal <= 2048",
    );
    t.row(
        "heap of an idle open client",
        printed(&log, "idle open client").map(|b| format!("{b:.0} bytes")),
        "",
    );
    t.row(
        "heap per in-flight client request",
        printed(&log, "per in-flight pull request").map(|b| format!("{b:.0} bytes")),
        "",
    );
    let client = get("client/round_trip/client");
    let codec = get("client/round_trip/baseline_codec_only");
    t.row(
        "client round trip / codec only",
        ratio(client, codec).map(|r| format!("{r:.2}x")),
        "the client's own cost over encoding and decoding",
    );
    // The browser packages (crates/syncmux-browser/web/build.sh, run by bench-report.sh when
    // the wasm tools are there): gzip -9 of .wasm plus JavaScript glue.
    let kib = |b: f64| format!("{:.1} KiB", b / 1024.0);
    t.row(
        "browser sync client (npm syncmux), gzipped",
        printed(&log, "size syncmux: gzip").map(kib),
        "goal <= 50 KiB; before the split (one module with both clients, stable, wasm-opt 108): 159.6 KiB",
    );
    t.row(
        "browser OT client (npm syncmux-ot), gzipped",
        printed(&log, "size syncmux-ot: gzip").map(kib),
        "goal <= 40 KiB; before the split it was in the sync client's module",
    );
    let cursor = get("store/pull 100 of 1M (4 tables)/after cursor");
    let clone = get("store/pull 100 of 1M (4 tables)/baseline: clone 100 records");
    t.row("store pull 100 of 1M after a cursor", cursor.map(ns), "");
    t.row(
        "store pull / cloning the 100 records",
        ratio(cursor, clone).map(|r| format!("{r:.2}x")),
        "",
    );

    // Scale-out and durability (benches redis and durable, when they ran): each against the
    // MemoryStore doing the same in the same run.
    let pairs = [
        (
            "push 1 change: Redis / MemoryStore",
            "redis_push/redis_1",
            "redis_push/memory_store_1",
        ),
        (
            "push to delivery: two servers on Redis / one on MemoryStore",
            "redis_push_to_delivery/two_servers_on_redis",
            "redis_push_to_delivery/one_server_memory_store",
        ),
        (
            "50 deliveries per server: each of two on Redis / one on MemoryStore",
            "redis_deliveries_per_server/each_of_two_servers_on_redis",
            "redis_deliveries_per_server/one_server_memory_store",
        ),
        (
            "push 1 change: through Sentinel / to one Redis",
            "redis_ha_push/sentinel",
            "redis_ha_push/one_redis",
        ),
        (
            "push 1 change: acked once a replica holds it / to one Redis",
            "redis_ha_push/min_replicas_1",
            "redis_ha_push/one_redis",
        ),
        (
            "push 1 change: on a 3-primary Cluster / to one Redis",
            "redis_ha_push/cluster",
            "redis_ha_push/one_redis",
        ),
        (
            "push 1 change, durable: SQLite / MemoryStore",
            "durable_push/sqlite_1",
            "durable_push/memory_store_1",
        ),
        (
            "push 100 changes, durable: SQLite / MemoryStore",
            "durable_push/sqlite_100",
            "durable_push/memory_store_100",
        ),
        (
            "pull 100 of 1M after a cursor: SQLite / MemoryStore",
            "durable_pull_100_after_cursor_of_1m/sqlite",
            "durable_pull_100_after_cursor_of_1m/memory_store",
        ),
    ];
    for (what, a, b) in pairs {
        if let Some(r) = ratio(get(a), get(b)) {
            let note = format!(
                "{} vs {}",
                ns(get(a).unwrap_or(0.0)),
                ns(get(b).unwrap_or(0.0))
            );
            t.row(what, Some(format!("{r:.1}x")), &note);
        }
    }
    if let Some(open) = get("durable_open_1m/sqlite_quick_check") {
        t.row(
            "open a 1M-change SQLite store (with quick_check)",
            Some(ns(open)),
            "",
        );
    }

    let w0 = t
        .rows
        .iter()
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(0);
    let w1 = t
        .rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0);
    println!("| {:w0$} | {:w1$} | note", "figure", "value");
    println!("|{}|{}|------", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
    for (what, value, note) in &t.rows {
        println!("| {what:w0$} | {value:>w1$} | {note}");
    }
    if est.is_empty() {
        eprintln!(
            "no criterion results under {}: run scripts/bench-report.sh",
            dir.display()
        );
    }
    Ok(())
}
