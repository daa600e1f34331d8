#!/usr/bin/env bash
# Call throughput side by side (issue [5/8]): `callguard serve` (embedded store in a temp dir,
# metrics on a free port) and the bare baseline (`callguard loadgen baseline`), driven by the
# same generator in the same run, interleaved over ROUNDS rounds; prints every run, then the
# medians and the callguard/baseline ratio for FastAGI and ESL, then a fixed-rate run at RATE
# calls/s against callguard with the server's own in-server verdict time.
#
#   bash tests/bench/side_by_side.sh                       # defaults below
#   ROUNDS=7 CALLS=100000 CONCURRENCY=64 RATE=5000 bash tests/bench/side_by_side.sh
#   BIN=/tmp/callguard-old bash tests/bench/side_by_side.sh  # another build, same generator
#   RATE_NICE=19 bash tests/bench/side_by_side.sh    # the fixed-rate generator under nice -n 19
#
# Speed figures are printed, never asserted; a wrong verdict or an error fails the script.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
CALLS=${CALLS:-50000}
CONCURRENCY=${CONCURRENCY:-64}
RATE=${RATE:-5000}
RATE_CALLS=${RATE_CALLS:-25000}
BLOCKED=${BLOCKED:-1000}
RATE_NICE=${RATE_NICE:-0}
# What runs the generator: itself, or (fixed-rate runs) under nice.
launcher=()

cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/common.sh
. tests/bench/common.sh
bin=$(callguard_bin)

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

store=$tmp/lists.toml
# Production defaults (log level info, flood detection on, call log off); only the addresses
# are chosen here.
"$bin" --store "$store" serve --agi-listen 127.0.0.1:0 --esl-listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 2>"$tmp/serve.log" &
pids+=($!)
"$bin" loadgen baseline >"$tmp/baseline.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do
    grep -q 'snapshot published' "$tmp/serve.log" 2>/dev/null && [ -s "$tmp/baseline.out" ] && break
    sleep 0.1
done
field() { grep -o "$1=[^ ]*" "$2" | head -1 | cut -d= -f2; }
cg_agi=$(field agi "$tmp/serve.log")
cg_esl=$(field esl "$tmp/serve.log")
cg_metrics=$(field metrics "$tmp/serve.log")
bl_agi=$(field agi "$tmp/baseline.out")
bl_esl=$(field esl "$tmp/baseline.out")
echo "callguard agi=$cg_agi esl=$cg_esl metrics=$cg_metrics; baseline agi=$bl_agi esl=$bl_esl"
echo "rounds=$ROUNDS calls=$CALLS concurrency=$CONCURRENCY blocked-numbers=$BLOCKED $(nproc) cores"

# Write the block list once, and wait until the server has it.
"$bin" --store "$store" loadgen --agi "$cg_agi" --calls 100 --blocked-numbers "$BLOCKED" >/dev/null

run() { # name, loadgen args...
    local name=$1
    shift
    local out
    out=$("${launcher[@]}" "$bin" --store "$store" loadgen "$@") || {
        echo "$name FAILED:"
        echo "$out"
        exit 1
    }
    local rate lat
    rate=$(grep -o '= [0-9]* calls/s' <<<"$out" | tr -dc 0-9)
    lat=$(grep '^latency' <<<"$out" | sed 's/latency us: //')
    echo "$name $rate $lat" | tee -a "$tmp/results"
    grep '^in-server' <<<"$out" || true
}

common=(--calls "$CALLS" --concurrency "$CONCURRENCY")
for round in $(seq "$ROUNDS"); do
    echo "-- round $round"
    run cg-agi --agi "$cg_agi" "${common[@]}" --blocked-numbers "$BLOCKED" --keep-list
    run bl-agi --agi "$bl_agi" "${common[@]}" --count-only
    run cg-esl --esl "$cg_esl" "${common[@]}" --blocked-numbers "$BLOCKED" --keep-list
    run bl-esl --esl "$bl_esl" "${common[@]}" --count-only
done

median() { # name, column (2 = calls/s, 4 = p50, 6 = p99, 8 = p99.9, 10 = max)
    grep "^$1 " "$tmp/results" | awk -v c="$2" '{print $c}' | sort -n |
        awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : int((v[NR/2]+v[NR/2+1])/2)}'
}
echo
echo "medians over $ROUNDS rounds (latency in us):"
printf '%-8s %10s %8s %8s %8s %8s\n' server calls/s p50 p99 p99.9 max
for name in cg-agi bl-agi cg-esl bl-esl; do
    printf '%-8s %10s %8s %8s %8s %8s\n' "$name" "$(median $name 2)" "$(median $name 4)" \
        "$(median $name 6)" "$(median $name 8)" "$(median $name 10)"
done
for proto in agi esl; do
    awk -v a="$(median cg-$proto 2)" -v b="$(median bl-$proto 2)" -v p=$proto \
        'BEGIN {printf "ratio %s: callguard/baseline = %.2f (of the medians)", p, a / b}'
    # Each round's pair ran back to back, so its ratio sees the same machine load.
    paste <(grep "^cg-$proto " "$tmp/results" | awk '{print $2}') \
        <(grep "^bl-$proto " "$tmp/results" | awk '{print $2}') |
        awk '{print $1 / $2}' | sort -n |
        awk '{v[NR]=$1} END {printf ", %.2f (median of per-round ratios)\n", (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'
done

echo
echo "fixed rate $RATE calls/s, $RATE_CALLS calls, against callguard (generator at nice $RATE_NICE):"
launcher=(nice -n "$RATE_NICE")
run rate-agi --agi "$cg_agi" --calls "$RATE_CALLS" --concurrency "$CONCURRENCY" --rate "$RATE" \
    --blocked-numbers "$BLOCKED" --keep-list --metrics "$cg_metrics"
run rate-esl --esl "$cg_esl" --calls "$RATE_CALLS" --concurrency "$CONCURRENCY" --rate "$RATE" \
    --blocked-numbers "$BLOCKED" --keep-list --metrics "$cg_metrics"
