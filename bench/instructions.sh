#!/usr/bin/env bash
# Instructions per request per route, counted by callgrind: `bench/instructions.sh [REQUESTS]
# [ROUTE...]`. See bench/README.md, "Instructions per request". Installs valgrind when missing,
# builds the gateway with the sandbox's on-demand allocator (valgrind cannot reserve the pool's
# address space) beside the release build, then runs bench/instructions.py.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing valgrind" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
if command -v rustup >/dev/null; then
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
fi
cargo build --release --locked -p wasmgate --features wasmgate-sandbox/on-demand-allocator
cp target/release/wasmgate target/release/wasmgate-on-demand
cargo build --release --locked -p wasmgate -p wasmgate-bench
cargo build --locked --profile filter --target wasm32-wasip2 -p headers -p auth-jwt -p transform -p rate-limit -p cache
exec python3 bench/instructions.py target/release/wasmgate-on-demand "$@"
