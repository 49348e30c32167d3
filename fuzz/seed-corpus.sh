#!/usr/bin/env bash
# Writes the wire fixtures' inputs into fuzz/corpus/decode_frame/ (git-ignored) as the seed
# corpus of the decode_frame target: `fuzz/seed-corpus.sh && cargo fuzz run decode_frame`.
set -euo pipefail
cd "$(dirname "$0")/.."
SYNCMUX_WRITE_FUZZ_CORPUS=1 cargo test --quiet --test fixtures
echo "seed corpus: $(ls fuzz/corpus/decode_frame | wc -l) files in fuzz/corpus/decode_frame/"
