#!/usr/bin/env bash
# In-server verdict time at a fixed rate, finer than a percentile bucket (issue [5/8]): for each
# build in BINS (alternated ROUNDS times), one `serve` (embedded store, production defaults),
# CALLS calls (PROTOCOL agi or esl) at RATE calls/s with the generator at nice NICE, and the
# share of calls whose time from call data received to verdict written was at most 50 µs and
# 75 µs (from the callguard_verdict_seconds buckets around the run). Not part of CI.
#   bash tests/bench/in_server.sh                                   # this tree's release build
#   BINS="/tmp/cg-old /tmp/cg-new" NICE=19 ROUNDS=3 bash tests/bench/in_server.sh
#   PROTOCOL=esl BINS="/tmp/cg-old /tmp/cg-new" bash tests/bench/in_server.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-5000}
CALLS=${CALLS:-20000}
NICE=${NICE:-0}
ROUNDS=${ROUNDS:-3}
PROTOCOL=${PROTOCOL:-agi}

# shellcheck source=tests/bench/common.sh
. tests/bench/common.sh
read -r -a bins <<<"${BINS:-$(callguard_bin)}"
tmp=$(mktemp -d)
serve_pid=
cleanup() {
  [[ -n $serve_pid ]] && kill "$serve_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# measure BIN: one serve, one run; prints the shares.
measure() {
  local bin=$1 store=$tmp/lists-$RANDOM.toml addr metrics
  "$bin" --store "$store" serve --agi-listen 127.0.0.1:0 --esl-listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 2>"$tmp/serve.log" &
  serve_pid=$!
  for _ in $(seq 100); do
    grep -q 'snapshot published' "$tmp/serve.log" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(grep -o "$PROTOCOL=[^ ]*" "$tmp/serve.log" | head -1 | cut -d= -f2)
  metrics=$(grep -o 'metrics=[^ ]*' "$tmp/serve.log" | head -1 | cut -d= -f2)
  "$bin" --store "$store" loadgen "--$PROTOCOL" "$addr" --calls 100 --blocked-numbers 1000 >/dev/null
  bucket() {
    curl -s "http://$metrics/metrics" |
      grep "callguard_verdict_seconds_bucket{protocol=\"$PROTOCOL\",le=\"$1\"}" | awk '{print $2}'
  }
  local b50 b75 ball a50 a75 aall
  b50=$(bucket 0.00005) b75=$(bucket 0.000075) ball=$(bucket +Inf)
  nice -n "$NICE" "$bin" --store "$store" loadgen "--$PROTOCOL" "$addr" --calls "$CALLS" \
    --concurrency 64 --rate "$RATE" --blocked-numbers 1000 --keep-list >"$tmp/loadgen.out"
  a50=$(bucket 0.00005) a75=$(bucket 0.000075) aall=$(bucket +Inf)
  kill "$serve_pid"
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=
  awk -v b="$bin" -v r="$(grep -o '= [0-9]* calls/s' "$tmp/loadgen.out")" \
    -v n50=$((a50 - b50)) -v n75=$((a75 - b75)) -v n=$((aall - ball)) \
    'BEGIN {printf "%s %s: <= 50 us %.2f%%, <= 75 us %.2f%% of %d calls\n", b, r, 100*n50/n, 100*n75/n, n}'
}

echo "$PROTOCOL: rate $RATE calls/s, $CALLS calls, generator at nice $NICE, $(nproc) cores"
for _ in $(seq "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    measure "$bin"
  done
done
