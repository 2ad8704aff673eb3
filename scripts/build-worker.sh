#!/usr/bin/env bash
# Builds the Worker: Rust -> wasm32 -> wasm-bindgen -> wasm-opt -> build/index.js + build/index_bg.wasm.
# worker-build would download wasm-bindgen and binaryen (wasm-opt) from GitHub, which is not
# reachable here: it uses the wasm-bindgen CLI that scripts/setup.sh installed at the crate's
# exact version, and the build runs wasm-opt itself from the npm package `binaryen` (pinned in
# package.json). See README, "Bundle size".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

# `wrangler dev` runs this build (wrangler.toml's [build] command) and then the Worker alone.
if [ "${WRANGLER_COMMAND:-}" = "dev" ]; then
  cat >&2 <<'NOTE'

  [tenantry] `wrangler dev` starts this Worker on its own: with wrangler.toml's APEX (example.com),
  an empty unmigrated control plane, no admin token and no Cloudflare API to create tenants with,
  so it can serve no tenant. The whole local stack (Worker + control plane + local cloud, tenants
  at http://<slug>.localhost:8787) is:

      npm run dev

  (README, "wrangler dev" says why, and what `wrangler dev` still shows.)

NOTE
fi
# The wrangler dev test sets this: the Worker in build/ is current already (npm test built it).
if [ -n "${TENANTRY_SKIP_BUILD:-}" ] && [ -f "$root/build/index.js" ]; then exit 0; fi
# WORKER_CRATE: another crate of the workspace to build (the benchmark's bare Worker).
cd "$root/${WORKER_CRATE:-.}"
export PATH="$root/node_modules/.bin:$HOME/.cargo/bin:$PATH"
# A failed compile is the compiler's message; worker-build's own backtrace after it says nothing more.
export RUST_LIB_BACKTRACE=0
WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
export WASM_BINDGEN_BIN
worker-build --release --no-opt "$@"

# -Oz: smallest. The features are the ones rustc's wasm32 target and wasm-bindgen emit (exception
# handling included); one the toolchain starts using that is not listed fails the build loudly.
before=$(wc -c < build/index_bg.wasm)
# WASM_NAMES=1 keeps the functions' names (a profiling build: BENCH_PROFILE=1 then names them).
node "$root/node_modules/binaryen/bin/wasm-opt" build/index_bg.wasm -Oz ${WASM_NAMES:+-g} \
  --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
  --enable-reference-types --enable-multivalue --enable-exception-handling \
  -o build/index_bg.wasm
# What wasm-opt saved, for `npm run bench`.
printf '{"before_wasm_opt": %s, "after_wasm_opt": %s}\n' "$before" "$(wc -c < build/index_bg.wasm)" > build/wasm-opt.json
