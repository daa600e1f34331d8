#!/usr/bin/env bash
# Scale run (issue [5/8]): a Redis with N exact numbers + M masks, then
#   - cold start: time from `serve` start to the loaded snapshot, calls answered meanwhile;
#   - resident memory of the loaded server minus that of the same server on an empty list;
#   - edit latency: `callguard edit-latency` (CLI writes and redis-cli SETs) at that size.
#   - restart with `redis.snapshot_file`: time until it decides from the file.
# LAYOUT=keys fills Redis with one key per rule (redis-cli --pipe, ~1.6 GB at 10M); LAYOUT=bulk
# (the default) with `callguard import` of the same rules, which writes them many per hash.
# Not part of CI (minutes; the bulk import of 10M takes ~2 min and ~8 GB). Usage:
#   N=10000000 MASKS=100000 bash tests/bench/scale.sh
#   N=10000000 MASKS=100000 LAYOUT=keys bash tests/bench/scale.sh
#   N=1000000 MASKS=0 BIN=/tmp/callguard-old LAYOUT=keys bash tests/bench/scale.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000000}
MASKS=${MASKS:-100000}
EDITS=${EDITS:-200}
LAYOUT=${LAYOUT:-bulk}

# shellcheck source=tests/bench/common.sh
. tests/bench/common.sh
BIN=$(callguard_bin)
work_with_redis

echo "== filling redis with $N numbers + $MASKS masks ($LAYOUT layout)"
t=$(date +%s.%N)
if [[ $LAYOUT == keys ]]; then
  python3 tests/bench/fill_redis.py "$N" "$MASKS" | redis-cli -p "$RPORT" --pipe | tail -1
else
  python3 tests/bench/fill_redis.py "$N" "$MASKS" --rules >"$WORK/rules.txt"
  "$BIN" --store "redis://127.0.0.1:$RPORT/0" import "$WORK/rules.txt" --layout "$LAYOUT" \
    --reason "spam list" | tail -1
  rm "$WORK/rules.txt"
fi
echo "fill took $(echo "$(date +%s.%N) - $t" | bc) s; redis used_memory_human: $(redis-cli -p "$RPORT" info memory | grep -m1 used_memory_human | cut -d: -f2 | tr -d '\r')"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
ready() { python3 - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}/readyz", timeout=1)
except Exception:
    sys.exit(1)
PY
}

# Starts `serve` on redis db $1; sets SERVE_PID, AGI, METRICS.
start_serve() {
  AGI=127.0.0.1:$(free_port)
  METRICS=127.0.0.1:$(free_port)
  CALLGUARD_FLOOD__ENABLED=false RUST_LOG=warn CALLGUARD_REDIS__SNAPSHOT_FILE="$WORK/snapshot-$1.bin" \
    "$BIN" --store "redis://127.0.0.1:$RPORT/$1" serve \
    --agi-listen "$AGI" --esl-listen 127.0.0.1:0 --metrics-listen "$METRICS" >"$WORK/serve-$1.log" 2>&1 &
  SERVE_PID=$!
}

echo "== empty list (db 1)"
start_serve 1
until ready "$METRICS"; do sleep 0.05; done
sleep 2
RSS_EMPTY=$(rss_kb "$SERVE_PID")
echo "rss empty: $RSS_EMPTY kB"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true

echo "== full list (db 0): cold start"
REDIS_CPU0=$(cpu_s "$REDIS_PID")
t0=$(date +%s.%N)
start_serve 0
# Calls during the load are answered from the empty snapshot (allow); count them.
until (echo >"/dev/tcp/${AGI%:*}/${AGI#*:}") 2>/dev/null; do sleep 0.01; done
"$BIN" loadgen --agi "$AGI" --calls 2000 --concurrency 4 --rate 200 --blocked-numbers 0 \
  >"$WORK/during-load.txt" 2>&1 &
LOADGEN_PID=$!
until ready "$METRICS"; do sleep 0.05; done
COLD=$(echo "$(date +%s.%N) - $t0" | bc)
echo "cold start (serve start to snapshot ready): $COLD s"
# Which side bounds the load: callguard decoding and building, or redis-server answering.
echo "CPU meanwhile: callguard $(cpu_s "$SERVE_PID") s, redis-server $(echo "$(cpu_s "$REDIS_PID") - $REDIS_CPU0" | bc) s"
wait "$LOADGEN_PID" || true
echo "calls placed while loading (answered from the empty snapshot):"
sed 's/^/  /' "$WORK/during-load.txt"
sleep 5
RSS_FULL=$(rss_kb "$SERVE_PID")
echo "rss full: $RSS_FULL kB"
echo "bytes per exact entry beyond the empty process: $(( (RSS_FULL - RSS_EMPTY) * 1024 / N ))"

echo "== a blocked number from the list, in another format"
"$BIN" --store "redis://127.0.0.1:$RPORT/0" check 84000007919 | head -1

echo "== edit latency at this size ($EDITS edits)"
"$BIN" --store "redis://127.0.0.1:$RPORT/0" edit-latency --agi "$AGI" --edits "$EDITS"

echo "== restart with the snapshot file (redis.snapshot_file)"
until [[ -s "$WORK/snapshot-0.bin" ]]; do sleep 0.2; done
sleep 2
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true
echo "snapshot file: $(stat -c %s "$WORK/snapshot-0.bin") bytes"
t0=$(date +%s.%N)
start_serve 0
until ready "$METRICS"; do sleep 0.05; done
echo "restart ready (deciding from the file) after $(echo "$(date +%s.%N) - $t0" | bc) s"
"$BIN" loadgen --agi "$AGI" --calls 200 --concurrency 4 --blocked-numbers 0 --keep-list | tail -2
