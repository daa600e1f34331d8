#!/usr/bin/env bash
# Cold start from Redis, the two layouts side by side (issue [5/8]): one private redis-server,
# db 0 filled with one key per rule (redis-cli --pipe), db 1 with the same rules through
# `callguard import --layout bulk`; then ROUNDS cold starts of `serve` on each, alternating,
# each printing the time to /readyz and the CPU seconds callguard and redis-server spent.
# Not part of CI. Usage:
#   N=10000000 MASKS=100000 ROUNDS=2 bash tests/bench/layouts.sh   # ~2 GB of Redis, ~8 GB import
#   N=1000000 MASKS=0 BIN=/tmp/callguard-old bash tests/bench/layouts.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
MASKS=${MASKS:-0}
ROUNDS=${ROUNDS:-2}

# shellcheck source=tests/bench/common.sh
. tests/bench/common.sh
BIN=$(callguard_bin)
work_with_redis
used() { redis-cli -p "$RPORT" info memory | grep -m1 '^used_memory:' | cut -d: -f2 | tr -d '\r'; }

echo "== $N numbers + $MASKS masks"
m0=$(used)
python3 tests/bench/fill_redis.py "$N" "$MASKS" | redis-cli -p "$RPORT" --pipe | tail -1
m1=$(used)
echo "keys layout (db 0): $(( (m1 - m0) / 1048576 )) MiB of Redis memory"
python3 tests/bench/fill_redis.py "$N" "$MASKS" --rules >"$WORK/rules.txt"
t=$(date +%s.%N)
"$BIN" --store "redis://127.0.0.1:$RPORT/1" import "$WORK/rules.txt" --layout bulk \
  --reason "spam list" | tail -1
echo "import took $(echo "$(date +%s.%N) - $t" | bc) s"
rm "$WORK/rules.txt"
echo "bulk layout (db 1): $(( ($(used) - m1) / 1048576 )) MiB of Redis memory"

# cold_start DB LABEL: one `serve` start to /readyz on that database.
cold_start() {
  local metrics r0 t0
  metrics=127.0.0.1:$(free_port)
  r0=$(cpu_s "$REDIS_PID")
  t0=$(date +%s.%N)
  CALLGUARD_FLOOD__ENABLED=false RUST_LOG=warn \
    "$BIN" --store "redis://127.0.0.1:$RPORT/$1" serve --agi-listen 127.0.0.1:0 \
    --esl-listen 127.0.0.1:0 --metrics-listen "$metrics" >"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  until curl -sf "http://$metrics/readyz" >/dev/null 2>&1; do sleep 0.02; done
  echo "$2: ready after $(echo "$(date +%s.%N) - $t0" | bc) s; CPU callguard $(cpu_s "$SERVE_PID") s, redis-server $(echo "$(cpu_s "$REDIS_PID") - $r0" | bc) s"
  kill "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=
}

for _ in $(seq "$ROUNDS"); do
  cold_start 0 "keys"
  cold_start 1 "bulk"
done
