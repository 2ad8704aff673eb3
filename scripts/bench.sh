#!/usr/bin/env bash
# `npm run bench`: builds tenantry and the bare Worker it is compared with (both release wasm, the
# same toolchain and lockfile), then runs the benchmarks (bench/run.mjs, bench/backups.mjs) and
# prints their tables.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"

echo "==> build tenantry (release wasm)"
bash scripts/build-worker.sh
echo "==> build the bare Worker (release wasm)"
WORKER_CRATE=bench/bare bash scripts/build-worker.sh
# The outside load generator, oha, from crates.io into .tenantry/tools (once; a few minutes).
OHA_VERSION=1.16.0
export OHA="$PWD/.tenantry/tools/bin/oha"
if ! "$OHA" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
  echo "==> install oha $OHA_VERSION (the outside load generator)"
  cargo install oha --locked --version "$OHA_VERSION" --root "$PWD/.tenantry/tools"
fi
echo "==> benchmark: what one cross-isolate hop costs on this workerd"
node bench/hop.mjs
echo "==> benchmark: the hot path, cold starts, lifecycle, migration fan-out"
node bench/run.mjs
echo "==> benchmark: backups and restores"
exec node bench/backups.mjs
