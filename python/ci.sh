#!/usr/bin/env bash
# The Python package's CI: fmt and clippy of the bindings, the Rust example server
# and client the interop tests run against, then a FRESH virtual environment with maturin,
# pytest and websockets from PyPI, the package installed the way the README says
# (`pip install ./python`), and pytest. Run by `.ci/run`; runs alone from any directory.
#
# Under CI (CI set) a missing python3, pip or node fails the run instead of skipping.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

step() { printf '\n--- python: %s\n' "$*"; }

command -v python3 >/dev/null || { echo "python/ci.sh: python3 is not on the PATH" >&2; exit 1; }
if [ -n "${CI:-}" ]; then
    command -v node >/dev/null || { echo "python/ci.sh: node is not on the PATH (CI)" >&2; exit 1; }
fi

step "fmt and clippy of the bindings (their own workspace)"
cargo fmt --manifest-path python/Cargo.toml -- --check
cargo clippy --manifest-path python/Cargo.toml --all-targets -- -D warnings

step "the Rust server and command-line client (interop peers)"
cargo build -p syncmux-server

step "a fresh virtual environment"
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip --version >/dev/null || { echo "python/ci.sh: pip is missing in the venv" >&2; exit 1; }
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet maturin pytest websockets

step "pip install ./python (maturin builds the abi3 extension)"
"$venv/bin/python" -m pip install --quiet ./python

step "pytest"
# From the tests' directory, so that `import syncmux` is the installed package.
(cd python/tests && "$venv/bin/python" -m pytest -q -ra)

step "bench smoke run (the figures: python python/bench/roundtrip.py)"
"$venv/bin/python" python/bench/roundtrip.py --rounds 200 --changes 10
