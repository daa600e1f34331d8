#!/usr/bin/env bash
# Runs the fuzz targets one after another (2-core machines: never in parallel), each for
# SECONDS (default 600), on its committed corpus, with the memory and time caps the hardening
# issue asks for; logs go to tests/fuzz/logs/<target>.log, crash inputs to tests/fuzz/artifacts/<target>/.
# Needs `cargo install cargo-fuzz` and a nightly toolchain. Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(agi_reader esl_reader normalizer rule_parser encoders)
fi
dir=tests/fuzz
mkdir -p "$dir/logs"
cargo +nightly fuzz build --fuzz-dir "$dir"
failed=0
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    if cargo +nightly fuzz run --fuzz-dir "$dir" "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=5 \
        -print_final_stats=1 >"$dir/logs/$target.log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|Done)' "$dir/logs/$target.log" || true
    else
        echo "$target FAILED: see $dir/logs/$target.log and $dir/artifacts/$target/"
        failed=1
    fi
done
exit "$failed"
