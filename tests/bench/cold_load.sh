#!/usr/bin/env bash
# Cold start from Redis (issue [5/8]): a private redis-server on a free port (temp dir, no
# persistence), NUMBERS rules imported into it, then `callguard serve` started ROUNDS times;
# prints the time from start to the first published snapshot and the CPU seconds the server
# and redis-server spent meanwhile (which of the two bounds the load).
#
#   bash tests/bench/cold_load.sh                      # 1,000,000 rules, 3 rounds
#   NUMBERS=10000000 ROUNDS=2 bash tests/bench/cold_load.sh
#   BIN=/tmp/callguard-old bash tests/bench/cold_load.sh
#
# Figures are printed, never asserted.
set -euo pipefail
NUMBERS=${NUMBERS:-1000000}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/../.."
if [ -n "${BIN:-}" ]; then
    bin=$BIN
else
    cargo build --release --locked --quiet
    bin=$PWD/target/release/callguard
fi
command -v redis-server >/dev/null || { echo "redis-server is needed" >&2; exit 2; }
tmp=$(mktemp -d)
rpid=""
cleanup() {
    [ -z "$rpid" ] || kill "$rpid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
    >"$tmp/redis.log" 2>&1 &
rpid=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
url=redis://127.0.0.1:$port/0
: >"$tmp/empty.toml"
python3 -c "
import sys
with open(sys.argv[1], 'w') as f:
    for i in range(int(sys.argv[2])):
        f.write('+7%d\n' % (9160000000 + i))
" "$tmp/numbers.txt" "$NUMBERS"
CALLGUARD_CONFIG=$tmp/empty.toml "$bin" --store "$url" import "$tmp/numbers.txt" | tail -1
echo "redis: $(redis-cli -p "$port" dbsize) keys, $(redis-cli -p "$port" info memory | sed -n 's/^used_memory_human://p' | tr -d '\r')"

cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
    r0=$(cpu "$rpid")
    t0=$(date +%s.%N)
    CALLGUARD_CONFIG=$tmp/empty.toml "$bin" --store "$url" serve --agi-listen 127.0.0.1:0 \
        --esl-listen off --metrics-listen off 2>"$tmp/serve.log" &
    pid=$!
    until grep -q 'snapshot published' "$tmp/serve.log"; do
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; exit 1; }
        sleep 0.05
    done
    t1=$(date +%s.%N)
    echo "round $round: first snapshot after $(echo "$t1 - $t0" | bc | cut -c1-6) s;" \
        "server CPU $(cpu "$pid") s, redis-server CPU $(echo "$(cpu "$rpid") - $r0" | bc) s"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done
