#!/usr/bin/env bash
# Builds the Worker when build/index_bg.wasm is missing or older than anything it is built from
# (src/, host/, migrations/, build.rs, Cargo.toml, Cargo.lock), so a fresh clone's `npm run dev` works
# without `npm test` having run first. Quiet when the build is current.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  echo "tenantry: Rust is not installed (no cargo on PATH). Install it with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi
wasm=build/index_bg.wasm
if [ -f "$wasm" ] && [ -f build/index.js ] \
   && [ -z "$(find src host migrations build.rs Cargo.toml Cargo.lock -newer "$wasm" -print -quit 2>/dev/null)" ]; then
  exit 0
fi
echo "[build] the Worker is missing or older than its sources: building it (release wasm, about 2 minutes)"
if ! bash scripts/build-worker.sh > .tenantry-build.log 2>&1; then
  cat .tenantry-build.log >&2
  echo "tenantry: the Worker did not build (the compiler's output is above)." >&2
  exit 1
fi
rm -f .tenantry-build.log
