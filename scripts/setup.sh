#!/usr/bin/env bash
# Installs what building, running and testing tenantry needs, on a machine of this image
# (Node 20, Rust via rustup without the wasm32 target). Idempotent: each step checks first, so a
# second run takes a second or two.
#
# - Node 22 and the JS tools (wrangler, miniflare, vitest, binaryen, autocannon, and prettier, eslint
#   and typescript for the JS's own checks) from package-lock.json; Node 22 comes from the npm
#   package `node`, which `npm run` puts first on PATH.
# - the wasm32-unknown-unknown Rust target;
# - wasm-bindgen-cli at exactly the version of the wasm-bindgen crate in Cargo.lock;
# - worker-build at the version of the worker crate in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] %s\n' "$*" >&2; exit 1; }

# What cannot be installed from here: say so in a sentence, not a stack trace.
command -v npm >/dev/null || fail "npm is missing: install Node.js 20 or later (https://nodejs.org), then run this again."
command -v rustup >/dev/null && command -v cargo >/dev/null \
  || fail "Rust is missing (rustup and cargo): install it from https://rustup.rs, open a new shell, then run this again."

if [ ! -x node_modules/.bin/node ] || [ ! -f node_modules/.package-lock.json ] \
   || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (Node 22, wrangler, miniflare, vitest, binaryen, autocannon, prettier, eslint, typescript)"
  # `npm install`, not `npm ci`: the lock cannot list workerd's binaries for other platforms
  # (this registry does not serve them), which `npm ci` insists on.
  npm install --no-save --no-audit --no-fund --loglevel=error
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

version_of() { "$@" --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -1; }
locked() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock; }

bindgen_version="$(locked wasm-bindgen)"
if [ "$(version_of wasm-bindgen)" != "$bindgen_version" ]; then
  say "installing wasm-bindgen-cli $bindgen_version (a few minutes, once)"
  # Not --locked: its own lock file pins a dependency version this registry mirror lacks.
  cargo install wasm-bindgen-cli --version "=$bindgen_version" --force
fi

worker_version="$(locked worker)"
if [ "$(version_of worker-build)" != "$worker_version" ]; then
  say "installing worker-build $worker_version (a few minutes, once)"
  cargo install worker-build --version "=$worker_version" --force
fi
