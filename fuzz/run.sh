#!/usr/bin/env bash
# Runs the fuzz targets one after another (2-core machines: never in parallel), each for
# SECONDS (default 600), on its committed corpus, with the memory and time caps the hardening
# issue asks for; logs go to fuzz/logs/<target>.log, crash inputs to fuzz/artifacts/<target>/.
# Needs `cargo install cargo-fuzz` and a nightly toolchain. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(agi_reader esl_reader normalizer rule_parser encoders)
fi
mkdir -p fuzz/logs
cargo +nightly fuzz build
failed=0
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    if cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=5 \
        -print_final_stats=1 >"fuzz/logs/$target.log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|Done)' "fuzz/logs/$target.log" || true
    else
        echo "$target FAILED: see fuzz/logs/$target.log and fuzz/artifacts/$target/"
        failed=1
    fi
done
exit "$failed"
