#!/usr/bin/env bash
# Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (git-ignored), from
# the wire fixtures' inputs (tests/fixtures/wire/):
#   fuzz/seed-corpus.sh && cargo +nightly fuzz run decode_frame
# decode_frame and decode_payload take frames as they are. client, server, ot_text and
# ot_server read their bytes through `arbitrary` as structured operations; the frames give
# them varied starting points and libFuzzer's mutations take it from there.
set -euo pipefail
cd "$(dirname "$0")/.."
SYNCMUX_WRITE_FUZZ_CORPUS=1 cargo test --quiet -p syncmux --test core fixtures::
for target in decode_payload client server ot_text ot_server; do
    mkdir -p "fuzz/corpus/$target"
    cp fuzz/corpus/decode_frame/* "fuzz/corpus/$target/"
done
for target in decode_frame decode_payload client server ot_text ot_server; do
    echo "seed corpus: $(ls "fuzz/corpus/$target" | wc -l) files in fuzz/corpus/$target/"
done
