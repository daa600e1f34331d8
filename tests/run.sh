#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need, then runs
# formatting, lints and the whole test suite. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "tests/run.sh: installing redis-server (the integration tests start their own on a free port)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
