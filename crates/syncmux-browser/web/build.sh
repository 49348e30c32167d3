#!/usr/bin/env bash
# Builds the browser clients as two npm packages, each its own .wasm, so that an app downloads
# only the client it imports:
#
#   crates/syncmux-browser/web/pkg/     syncmux     SyncClient (feature `sync`): syncmux.js,
#                                                   syncmux_bg.wasm, syncmux.d.ts, package.json
#   crates/syncmux-browser/web/pkg-ot/  syncmux-ot  OtClient (feature `ot`): syncmux_ot.js, ...
#
# then installs the first into crates/syncmux-browser/web/ for the demo page, and prints each
# package's size (.wasm and JavaScript, raw and gzip -9):
#
#     crates/syncmux-browser/web/build.sh            # build, print the sizes
#     crates/syncmux-browser/web/build.sh --check    # and fail when a package grew past its limit
#
# A web app adds the client with one command, `npm install path/to/crates/syncmux-browser/web/pkg`,
# and imports it as `import init, { SyncClient } from "syncmux"` (an ES module: call
# `await init()` first; the .wasm is found next to syncmux.js); the OT client likewise from
# `pkg-ot` as `import init, { OtClient } from "syncmux-ot"`.
#
# Then serve crates/syncmux-browser/web/ with the server (`--static crates/syncmux-browser/web`)
# and open http://ADDR/: index.html maps the bare specifier `syncmux` to node_modules/syncmux/
# with an import map.
#
# Needs the wasm-bindgen CLI of the exact version pinned in Cargo.toml, wasm-opt (Debian:
# binaryen), npm for the demo's install, and the pinned nightly below with rust-src (.ci/run
# installs them all). The nightly rebuilds the standard library for the size profile with
# `panic=immediate-abort` (no panic messages, locations or their formatting in the .wasm):
# about a tenth of each package. Without that toolchain the build falls back to stable, bigger.
set -euo pipefail
cd "$(dirname "$0")/../../.."

check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# Sizes are gzip -9 of .wasm plus JavaScript glue, as a server would send them. The goals:
# what a web developer expects of a real-time client (socket.io-client 13-14 KiB,
# centrifuge-js about 23); not reached yet, printed beside each package's size.
SYNC_GOAL=$((50 * 1024))
OT_GOAL=$((40 * 1024))
# What --check fails over: the packages' sizes when they were last made smaller, with a
# little room. Lower them with each change that shrinks a package, so that nothing makes one
# bigger unnoticed on the way to the goals.
SYNC_LIMIT=$((108 * 1024))
# syncmux-ot: 60.0 KiB, 62.6 with its fallback to the HTTP transport (EventSource and POSTs),
# 62.99 once its POSTs name their stream by its session event, 59.8 with ops and frames read
# without serde_json's Value.
OT_LIMIT=$((61 * 1024))

# Pinned, so that the flags below (unstable) and the sizes do not move under us.
NIGHTLY=nightly-2026-05-20
# Its own target directory: the standard library built with other flags would otherwise
# invalidate the workspace's cached builds.
target_dir="${CARGO_TARGET_DIR:-target}/wasm-pkg"
if rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
    && [ -d "$(rustup run "$NIGHTLY" rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
    cargo=(cargo "+$NIGHTLY")
    build_std=(-Z build-std=std,panic_abort)
    # No panic machinery, and no source locations for it (#[track_caller] arguments).
    rustflags="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none"
else
    echo "warning: $NIGHTLY with rust-src not installed; building on stable, bigger" >&2
    echo "  (rustup toolchain install $NIGHTLY --profile minimal --component rust-src)" >&2
    cargo=(cargo)
    build_std=()
    rustflags=""
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
over=()

# build FEATURE PACKAGE MODULE OUT DESCRIPTION LIMIT GOAL
build() {
    local feature=$1 package=$2 module=$3 out=$4 description=$5 limit=$6 goal=$7
    RUSTFLAGS="$rustflags" "${cargo[@]}" build -p syncmux-browser --target wasm32-unknown-unknown \
        --profile wasm-release --no-default-features --features "$feature" \
        --target-dir "$target_dir" "${build_std[@]}"
    local wasm="$target_dir/wasm32-unknown-unknown/wasm-release/syncmux_browser.wasm"
    if command -v wasm-opt >/dev/null; then
        # Before wasm-bindgen, not after: binaryen releases older than about 116 (Debian 12
        # has 108) break the externref table of wasm-bindgen's output. Features come from
        # the module's target_features section.
        wasm-opt -Oz "$wasm" -o "$wasm.$feature.opt"
        wasm="$wasm.$feature.opt"
    else
        echo "warning: wasm-opt not found; $package is not size-optimised" >&2
    fi
    rm -rf "$out"
    # Without the function names (a browser's stack traces show indices instead) and the
    # producers section: some 4 KB of each .wasm that only debugging reads.
    wasm-bindgen --target web --remove-name-section --remove-producers-section \
        --out-dir "$out" --out-name "$module" "$wasm"

    # The package manifest: wasm-bindgen writes none for --target web. The version is the crate's.
    cat >"$out/package.json" <<JSON
{
  "name": "$package",
  "version": "$version",
  "description": "$description",
  "license": "MIT OR Apache-2.0",
  "type": "module",
  "main": "$module.js",
  "module": "$module.js",
  "types": "$module.d.ts",
  "exports": {
    ".": {
      "types": "./$module.d.ts",
      "default": "./$module.js"
    },
    "./${module}_bg.wasm": "./${module}_bg.wasm"
  },
  "files": [
    "$module.js",
    "$module.d.ts",
    "${module}_bg.wasm",
    "${module}_bg.wasm.d.ts"
  ],
  "sideEffects": false
}
JSON
    echo "wrote $out/package.json ($package $version)"

    local wasm_bytes js_bytes wasm_gz js_gz gz
    wasm_bytes=$(wc -c <"$out/${module}_bg.wasm")
    js_bytes=$(wc -c <"$out/$module.js")
    wasm_gz=$(gzip -9c "$out/${module}_bg.wasm" | wc -c)
    js_gz=$(gzip -9c "$out/$module.js" | wc -c)
    gz=$((wasm_gz + js_gz))
    # One line per package, read by the bench report (`size PACKAGE: gzip N B`).
    printf 'size %s: gzip %d B (%d.%d KiB; .wasm %d + .js %d), raw %d B (.wasm %d + .js %d), limit %d KiB, goal %d KiB\n' \
        "$package" "$gz" $((gz / 1024)) $((gz % 1024 * 10 / 1024)) "$wasm_gz" "$js_gz" \
        $((wasm_bytes + js_bytes)) "$wasm_bytes" "$js_bytes" $((limit / 1024)) $((goal / 1024))
    if [ "$gz" -gt "$limit" ]; then
        over+=("$package: $gz B gzipped > $limit B")
    fi
}

build sync syncmux syncmux crates/syncmux-browser/web/pkg \
    "Browser client of the syncmux sync protocol (Rust compiled to WebAssembly)" "$SYNC_LIMIT" "$SYNC_GOAL"
build ot syncmux-ot syncmux_ot crates/syncmux-browser/web/pkg-ot \
    "Browser OT client of syncmux (open-ot text documents; Rust compiled to WebAssembly)" "$OT_LIMIT" "$OT_GOAL"

# The demo uses the package as an app would: installed, not imported from pkg/. Copied
# (--install-links), not linked, so node_modules/syncmux holds exactly the package's files;
# removed first, as npm finds a package of the same version "up to date" and keeps its old
# files.
if command -v npm >/dev/null; then
    rm -rf crates/syncmux-browser/web/node_modules/syncmux
    npm install --prefix crates/syncmux-browser/web --no-save --install-links --no-audit --no-fund \
        --no-package-lock ./crates/syncmux-browser/web/pkg
    echo "installed crates/syncmux-browser/web/node_modules/syncmux"
else
    echo "npm not found: the demo page needs crates/syncmux-browser/web/node_modules/syncmux" >&2
    exit 1
fi

if [ ${#over[@]} -gt 0 ]; then
    printf 'over the size limit: %s\n' "${over[@]}" >&2
    if $check; then
        exit 1
    fi
fi
