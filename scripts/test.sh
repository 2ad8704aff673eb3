#!/usr/bin/env bash
# Every check, in the order a failure is cheapest to find: the JavaScript's formatting, lints and
# types, the Rust's formatting and lints (host and wasm32), the native tests (the core, the storage
# layer, the sagas on the in-memory platform), then
# the wasm build and the end-to-end suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "prettier --check ."
prettier --check .

step "eslint ."
eslint .

step "tsc -p ."
tsc -p .

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy (host)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo clippy (wasm32)"
cargo clippy --workspace --target wasm32-unknown-unknown --locked -- -D warnings

step "cargo test (the core, the storage layer and the sagas, natively)"
cargo test --locked

step "build the Worker (release wasm)"
bash scripts/build-worker.sh

step "end-to-end tests (workerd + local cloud + wrangler)"
report="$(mktemp)"
status=0
vitest run --reporter=default --reporter=json --outputFile.json="$report" || status=$?
# One plain closing line with the counts, whatever the reporter printed above it.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`\nvitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
' "$report" || true
rm -f "$report"
exit "$status"
