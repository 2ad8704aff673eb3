#!/usr/bin/env bash
# `npm run bench`: builds tenantry and the bare Worker it is compared with (both release wasm, the
# same toolchain and lockfile), then runs the benchmark (bench/run.mjs) and prints its table.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"

echo "==> build tenantry (release wasm)"
bash scripts/build-worker.sh
echo "==> build the bare Worker (release wasm)"
WORKER_CRATE=bench/bare bash scripts/build-worker.sh
echo "==> benchmark"
exec node bench/run.mjs
