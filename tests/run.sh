#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need, then runs
# formatting, lints and the whole test suite. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server (and redis-cli) for the servers, sentinels and clusters the integration tests
# start on free ports; openssl for the throwaway CA and certificates of the TLS tests;
# Debian's chromium and its WebDriver for the web-page tests (headless, no display needed).
MISSING=""
command -v redis-server >/dev/null 2>&1 || MISSING="$MISSING redis-server"
command -v redis-cli >/dev/null 2>&1 || MISSING="$MISSING redis-tools"
command -v openssl >/dev/null 2>&1 || MISSING="$MISSING openssl"
[ -x /usr/bin/chromium ] || MISSING="$MISSING chromium"
[ -x /usr/bin/chromedriver ] || MISSING="$MISSING chromium-driver"
if [ -n "$MISSING" ]; then
    echo "tests/run.sh: installing$MISSING"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
