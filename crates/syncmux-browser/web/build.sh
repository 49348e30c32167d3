#!/usr/bin/env bash
# Builds the browser client as an npm package in crates/syncmux-browser/web/pkg/ (syncmux.js,
# syncmux_bg.wasm, syncmux.d.ts, package.json), then installs it into crates/syncmux-browser/web/ for
# the demo page:
#
#     crates/syncmux-browser/web/build.sh
#
# A web app adds the client with one command, `npm install path/to/crates/syncmux-browser/web/pkg`,
# and imports it as `import init, { SyncClient } from "syncmux"` (an ES module: call
# `await init()` first; the .wasm is found next to syncmux.js).
#
# Then serve crates/syncmux-browser/web/ with the server (`--static crates/syncmux-browser/web`) and open
# http://ADDR/: index.html maps the bare specifier `syncmux` to node_modules/syncmux/ with an
# import map. Needs the wasm32 target and the wasm-bindgen CLI of the exact version pinned in
# Cargo.toml (.ci/run installs both), and npm for the demo's install; runs wasm-opt when it is
# installed (Debian: binaryen).
set -euo pipefail
cd "$(dirname "$0")/../../.."

cargo build -p syncmux-browser --target wasm32-unknown-unknown --profile wasm-release
wasm=target/wasm32-unknown-unknown/wasm-release/syncmux_browser.wasm
out=crates/syncmux-browser/web/pkg
if command -v wasm-opt >/dev/null; then
    # Before wasm-bindgen, not after: binaryen releases older than about 116 (Debian 12 has
    # 108) break the externref table of wasm-bindgen's output. Features come from the
    # module's target_features section.
    wasm-opt -Oz "$wasm" -o "$wasm.opt"
    wasm="$wasm.opt"
fi
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name syncmux "$wasm"
bytes=$(wc -c <"$out/syncmux_bg.wasm")
echo "built $out/syncmux_bg.wasm: $bytes bytes ($((bytes / 1024)) KiB)"

# The package manifest: wasm-bindgen writes none for --target web. The version is the crate's.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
cat >"$out/package.json" <<JSON
{
  "name": "syncmux",
  "version": "$version",
  "description": "Browser client of the syncmux sync protocol (Rust compiled to WebAssembly)",
  "license": "MIT OR Apache-2.0",
  "type": "module",
  "main": "syncmux.js",
  "module": "syncmux.js",
  "types": "syncmux.d.ts",
  "exports": {
    ".": {
      "types": "./syncmux.d.ts",
      "default": "./syncmux.js"
    },
    "./syncmux_bg.wasm": "./syncmux_bg.wasm"
  },
  "files": [
    "syncmux.js",
    "syncmux.d.ts",
    "syncmux_bg.wasm",
    "syncmux_bg.wasm.d.ts"
  ],
  "sideEffects": false
}
JSON
echo "wrote $out/package.json (syncmux $version)"

# The demo uses the package as an app would: installed, not imported from pkg/. Copied
# (--install-links), not linked, so node_modules/syncmux holds exactly the package's files.
if command -v npm >/dev/null; then
    npm install --prefix crates/syncmux-browser/web --no-save --install-links --no-audit --no-fund \
        --no-package-lock "./$out"
    echo "installed crates/syncmux-browser/web/node_modules/syncmux"
else
    echo "npm not found: the demo page needs crates/syncmux-browser/web/node_modules/syncmux" >&2
    exit 1
fi
