#!/usr/bin/env bash
# wasmgate vs nginx, one command: `bench/run.sh`. See bench/README.md.
# Installs nginx, wrk, h2load, openssl, redis-server and python3 from Debian's packages when missing, builds release, then runs
# bench/run.py, which writes bench/RESULTS.md. DURATION (seconds per run, default 10) and RATE
# (requests per second for the fixed-rate runs, default 5000) may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v python3 >/dev/null || missing+=(python3)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null; then
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
fi
cargo build --release --locked -p wasmgate -p wasmgate-bench
cargo build --locked --profile filter --target wasm32-wasip2 -p headers -p auth-jwt -p transform -p rate-limit -p cache -p fail

# wrk at 1024 connections needs more descriptors than the usual soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true

exec python3 bench/run.py "$@"
