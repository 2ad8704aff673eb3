#!/usr/bin/env bash
# Builds the Worker: Rust -> wasm32 -> wasm-bindgen -> build/index.js + build/index_bg.wasm.
# worker-build would download wasm-bindgen and wasm-opt from GitHub, which is not reachable here:
# it uses the wasm-bindgen CLI that scripts/setup.sh installed at the crate's exact version, and
# skips wasm-opt (see README, "Bundle size").
set -euo pipefail
cd "$(dirname "$0")/.."
# WORKER_CRATE: another crate of the workspace to build (the benchmark's bare Worker).
cd "${WORKER_CRATE:-.}"
export PATH="$HOME/.cargo/bin:$PATH"
WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
export WASM_BINDGEN_BIN
exec worker-build --release --no-opt "$@"
