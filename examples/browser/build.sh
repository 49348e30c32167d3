#!/usr/bin/env bash
# Builds the browser client into examples/browser/pkg/ (syncmux.js, syncmux_bg.wasm, syncmux.d.ts):
#
#     examples/browser/build.sh
#
# then serve examples/browser/ with the example server (`--static examples/browser`) and open
# http://ADDR/. Needs the wasm32 target and the wasm-bindgen CLI of the exact version pinned in
# Cargo.toml (.ci/run installs both); runs wasm-opt when it is installed (Debian: binaryen).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --example browser --features wasm --target wasm32-unknown-unknown \
    --profile wasm-release
wasm=target/wasm32-unknown-unknown/wasm-release/examples/browser.wasm
out=examples/browser/pkg
if command -v wasm-opt >/dev/null; then
    # Before wasm-bindgen, not after: binaryen releases older than about 116 (Debian 12 has
    # 108) break the externref table of wasm-bindgen's output. Features come from the
    # module's target_features section.
    wasm-opt -Oz "$wasm" -o "$wasm.opt"
    wasm="$wasm.opt"
fi
wasm-bindgen --target web --out-dir "$out" --out-name syncmux "$wasm"
bytes=$(wc -c <"$out/syncmux_bg.wasm")
echo "built $out/syncmux_bg.wasm: $bytes bytes ($((bytes / 1024)) KiB)"
