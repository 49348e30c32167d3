#!/usr/bin/env bash
# Runs the criterion benches with short measurement times and prints a table of the headline
# figures (codec vs serde_json::Value, per-delivery fan-out cost, idle-session independence,
# e2e vs raw echo when there is an e2e bench, heap per idle session, OT server CPU per acked
# op against a Node server built the seed's way, the browser packages' gzipped sizes).
#
#   scripts/bench-report.sh            # about 5 minutes on 2 cores
#   BENCH_TIME=3 scripts/bench-report.sh   # longer measurements, steadier figures
#   BENCH_DURABLE=1 scripts/bench-report.sh  # also the durable store (builds 1M-change files)
#
# The Redis rows need `redis-server` on the PATH (the bench starts its own on a free port).
#
# Criterion keeps its results in target/criterion/; the benches' printed summary lines go to
# target/bench-report.log; the bench crate's bench_report reads both and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."

time_s="${BENCH_TIME:-1}"
args=(--warm-up-time 0.5 --measurement-time "$time_s" --sample-size 20)
log=target/bench-report.log
mkdir -p target
: > "$log"

for bench in wire client store server; do
    echo "=== cargo bench --bench $bench" >&2
    cargo bench -p syncmux --bench "$bench" -- "${args[@]}" | tee -a "$log"
done
echo "=== cargo bench -p syncmux-bench --bench e2e" >&2
cargo bench -p syncmux-bench --bench e2e -- "${args[@]}" | tee -a "$log"
echo "=== cargo bench -p syncmux-bench --bench http" >&2
cargo bench -p syncmux-bench --bench http -- "${args[@]}" | tee -a "$log"
# Not criterion: one timed window per server (OT_BENCH_SECS, default 5).
echo "=== cargo bench -p syncmux-bench --bench ot_e2e" >&2
cargo bench -p syncmux-bench --bench ot_e2e | tee -a "$log"

if command -v redis-server >/dev/null; then
    echo "=== cargo bench -p syncmux-redis --bench redis" >&2
    cargo bench -p syncmux-redis --bench redis -- "${args[@]}" | tee -a "$log"
fi
if [ -n "${BENCH_DURABLE:-}" ]; then
    # Builds two 1 000 000-change databases the first time (a few minutes), kept in target/.
    echo "=== cargo bench -p syncmux-sqlite --bench durable" >&2
    cargo bench -p syncmux-sqlite --bench durable -- "${args[@]}" | tee -a "$log"
fi
if [ -f scripts/fanout-bench ]; then
    # Not criterion: CPU per delivery of syncmux-server (WebSocket and SSE subscribers) and of
    # a Node ws server, same run.
    echo "=== scripts/fanout-bench --conns 1000 --runs 1 --servers syncmux,syncmux-sse,node" >&2
    scripts/fanout-bench --conns 1000 --runs 1 --servers syncmux,syncmux-sse,node | tee -a "$log"
fi

if command -v wasm-bindgen >/dev/null; then
    # Not a bench: the browser packages' sizes (gzip -9 of .wasm plus JavaScript), as built.
    echo "=== crates/syncmux-browser/web/build.sh" >&2
    crates/syncmux-browser/web/build.sh | tee -a "$log"
fi

echo
cargo run --quiet --release -p syncmux-bench --bin bench_report -- target/criterion "$log"
