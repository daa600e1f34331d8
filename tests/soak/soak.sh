#!/usr/bin/env bash
# Soak test (issue [6/8]), not in CI: `callguard serve` on a private Redis with persistence
# (appendonly), FastAGI calls at a fixed rate for SOAK_MINUTES, Redis restarted every
# RESTART_EVERY minutes (down REDIS_DOWN seconds each time), list edits through the CLI
# throughout. At the end every acknowledged edit is checked in Redis and by a call to the
# running server. Writes OUT/report.md and exits non-zero when a requirement failed.
#
#   bash tests/soak/soak.sh                                  # 30 min, 1,000 calls/s
#   SOAK_MINUTES=3 RESTART_EVERY=1 REPORT_EVERY=15s bash tests/soak/soak.sh   # shake-out
#
# Knobs (environment): SOAK_MINUTES (30), RESTART_EVERY (5, minutes), REDIS_DOWN (5, seconds),
# RATE (1000 calls/s), CONCURRENCY (64), BLOCKED_SHARE (0.3), REPORT_EVERY (60s),
# RSS_EVERY (60, seconds), EDIT_PAUSE (0.2, seconds between edits), OUT (target/soak/<time>),
# PROTOCOL (agi, or esl: the load as FreeSWITCH's socket app; the final check stays FastAGI).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SOAK_MINUTES=${SOAK_MINUTES:-30}
RESTART_EVERY=${RESTART_EVERY:-5}
REDIS_DOWN=${REDIS_DOWN:-5}
RATE=${RATE:-1000}
CONCURRENCY=${CONCURRENCY:-64}
BLOCKED_SHARE=${BLOCKED_SHARE:-0.3}
REPORT_EVERY=${REPORT_EVERY:-60s}
RSS_EVERY=${RSS_EVERY:-60}
EDIT_PAUSE=${EDIT_PAUSE:-0.2}
PROTOCOL=${PROTOCOL:-agi}
OUT=${OUT:-$ROOT/target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
# An edit the CLI keeps failing is given up after this many attempts (reported, not hidden).
EDIT_ATTEMPTS=${EDIT_ATTEMPTS:-600}

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
echo "soak: output in $OUT"

cargo build --release --locked --quiet
BIN=$ROOT/target/release/callguard
# The commit the binary was built from (+dirty when the tree had changes), for the report.
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo +dirty)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
APORT=$(free_port)
MPORT=$(free_port)
EPORT=$(free_port)
[[ $RPORT != 6379 ]] || RPORT=$(free_port)

PIDS=()
# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
  local rc=$?
  touch "$WORK/stop" 2>/dev/null || true
  # Background loops first (with their children: a sleep or a CLI run), then the server.
  for p in "${PIDS[@]}"; do
    pkill -TERM -P "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || true
  done
  [[ -n ${LOADGEN_PID:-} ]] && kill -TERM "$LOADGEN_PID" 2>/dev/null || true
  [[ -n ${SERVE_PID:-} ]] && kill -TERM "$SERVE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ -s $WORK/redis.pid ]]; then
    kill -TERM "$(cat "$WORK/redis.pid")" 2>/dev/null || true
    for _ in $(seq 50); do [[ -e $WORK/redis.pid ]] || break; sleep 0.1; done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/redis"
start_redis() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORK/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$OUT/redis.log"
  local i
  for i in $(seq 100); do
    redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server did not start on $RPORT" >&2
  return 1
}
stop_redis() {
  # SHUTDOWN flushes the AOF, so an acknowledged write survives the restart.
  local pid i
  pid=$(cat "$WORK/redis.pid")
  redis-cli -p "$RPORT" shutdown >/dev/null 2>&1 || true
  for i in $(seq 600); do [[ -e $WORK/redis.pid ]] || return 0; sleep 0.05; done
  echo "redis-server $pid did not stop in 30 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$WORK/redis.pid"
}
start_redis

CFG=$WORK/callguard.toml
cat >"$CFG" <<EOF
store = "redis://127.0.0.1:$RPORT/0"
log_level = "info"
[agi]
listen = "127.0.0.1:$APORT"
[esl]
listen = "127.0.0.1:$EPORT"
[metrics]
listen = "127.0.0.1:$MPORT"
EOF
cp "$CFG" "$OUT/callguard.toml"

now() { date +%s.%N; }
# VmRSS of pid $1 and the machine's 1-minute load average, tab-separated.
rss_kb() { printf '%s\t%s' "$(awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)" "$(cut -d' ' -f1 /proc/loadavg)"; }
ready() { python3 - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}/readyz", timeout=1)
except Exception:
    sys.exit(1)
PY
}

"$BIN" --config "$CFG" serve >"$OUT/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 200); do ready "127.0.0.1:$MPORT" && break; sleep 0.1; done
ready "127.0.0.1:$MPORT" || { echo "callguard serve did not get ready" >&2; exit 1; }
echo "soak: serve pid $SERVE_PID agi 127.0.0.1:$APORT metrics 127.0.0.1:$MPORT redis $RPORT"

# Write the generator's block list once and wait for the server to have it, so the soak run
# itself (--keep-list) starts placing calls at once and its clock matches the restarts'.
"$BIN" --config "$CFG" loadgen --agi "127.0.0.1:$APORT" --calls 1 >"$OUT/loadgen-prepare.out"

printf 't_s\trss_kb\tload1\n' >"$OUT/rss.tsv"
printf 't_s\twhat\n' >"$OUT/restarts.tsv"
printf 't_s\top\tnumber\tattempt\trc\toutput\n' >"$OUT/edits.tsv"
T0=$(now)
printf '0\t%s\n' "$(rss_kb "$SERVE_PID")" >>"$OUT/rss.tsv"
since() { echo "$(now) - $T0" | bc; }

case $PROTOCOL in
  agi) LOAD_TARGET=(--agi "127.0.0.1:$APORT") ;;
  esl) LOAD_TARGET=(--esl "127.0.0.1:$EPORT") ;;
  *) echo "PROTOCOL must be agi or esl" >&2; exit 2 ;;
esac
"$BIN" --config "$CFG" loadgen "${LOAD_TARGET[@]}" --keep-list \
  --duration "${SOAK_MINUTES}m" --rate "$RATE" --concurrency "$CONCURRENCY" \
  --blocked-share "$BLOCKED_SHARE" --report-every "$REPORT_EVERY" \
  --metrics "127.0.0.1:$MPORT" >"$OUT/loadgen.out" 2>"$OUT/loadgen.err" &
LOADGEN_PID=$!

# RSS of the server every RSS_EVERY seconds.
(
  i=1
  while [[ ! -e $WORK/stop ]]; do
    target=$(echo "$T0 + $i * $RSS_EVERY" | bc)
    while [[ ! -e $WORK/stop ]] && (( $(echo "$(now) < $target" | bc) )); do sleep 0.5; done
    [[ -e $WORK/stop ]] && break
    printf '%.0f\t%s\n' "$(since)" "$(rss_kb "$SERVE_PID")" >>"$OUT/rss.tsv"
    i=$((i + 1))
  done
) &
PIDS+=($!)

# Redis restarts at RESTART_EVERY, 2*RESTART_EVERY, ... minutes (not at the very end).
(
  i=1
  while (( i * RESTART_EVERY < SOAK_MINUTES )); do
    target=$(echo "$T0 + $i * $RESTART_EVERY * 60" | bc)
    while (( $(echo "$(now) < $target" | bc) )); do sleep 0.2; done
    printf '%.1f\tstop\n' "$(since)" >>"$OUT/restarts.tsv"
    stop_redis
    printf '%.1f\tdown\n' "$(since)" >>"$OUT/restarts.tsv"
    sleep "$REDIS_DOWN"
    start_redis
    printf '%.1f\tup\n' "$(since)" >>"$OUT/restarts.tsv"
    i=$((i + 1))
  done
) &
PIDS+=($!)

# Edits: block a fresh number each round (spelled three ways in turn) and, every other
# round, unblock one blocked earlier (each at most once). Each edit is retried until the CLI
# acknowledges it (exit 0); every attempt is logged. The numbers are +73..., 100,003 apart:
# the final check calls each once, and consecutive numbers would add up to a flood range ban
# (more than 30 calls a minute from one +7XXXXXXXXXX range) that blocks them all.
number() { printf '+7%d' $((3000000000 + $1 * 100003)); }
spelled() {
  local d=${1#+7}
  case $(($2 % 3)) in
    0) echo "+7$d" ;;
    1) echo "8$d" ;;
    *) echo "8 (${d:0:3}) ${d:3:3}-${d:6:2}-${d:8:2}" ;;
  esac
}
edit() { # op k
  local op=$1 k=$2 attempt=0 rc out args
  local canonical
  canonical=$(number "$k")
  while ((attempt < EDIT_ATTEMPTS)); do
    attempt=$((attempt + 1))
    args=("$op" "$(spelled "$canonical" $((k + attempt)))")
    [[ $op == block ]] && args+=(--reason "soak edit $k")
    if out=$("$BIN" --config "$CFG" "${args[@]}" 2>&1); then rc=0; else rc=$?; fi
    printf '%.3f\t%s\t%s\t%d\t%d\t%s\n' "$(since)" "$op" "$canonical" "$attempt" "$rc" \
      "$(echo "$out" | head -1 | tr '\t' ' ')" >>"$OUT/edits.tsv"
    ((rc == 0)) && return 0
    sleep 0.2
  done
}
(
  k=0
  while [[ ! -e $WORK/stop-editing ]]; do
    k=$((k + 1))
    edit block "$k"
    if ((k % 2 == 0 && k > 10)); then edit unblock $((k / 2)); fi
    sleep "$EDIT_PAUSE"
  done
) &
EDITOR_PID=$!
PIDS+=("$EDITOR_PID")

LOADGEN_RC=0
wait "$LOADGEN_PID" || LOADGEN_RC=$?
touch "$WORK/stop-editing"
wait "$EDITOR_PID" || true
printf '%.0f\t%s\n' "$(since)" "$(rss_kb "$SERVE_PID")" >>"$OUT/rss.tsv"
touch "$WORK/stop"
echo "soak: load done (loadgen exit $LOADGEN_RC); checking edits"

# Every acknowledged edit: the last acknowledged operation on a number decides what Redis
# and the server must say about it now.
python3 - "$OUT/edits.tsv" "$WORK/expect.txt" "$WORK/exists.redis" <<'PY'
import csv, sys
final = {}
with open(sys.argv[1]) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        if row["rc"] == "0":
            final[row["number"]] = row["op"]
with open(sys.argv[2], "w") as e, open(sys.argv[3], "w") as r:
    for number, op in sorted(final.items()):
        # Called in another spelling than the canonical one the CLI stored.
        e.write(f"8{number[2:]} {'block' if op == 'block' else 'allow'}\n")
        r.write(f"EXISTS callguard:block:{number}\n")
PY
sleep 3
redis-cli -p "$RPORT" <"$WORK/exists.redis" >"$OUT/redis-exists.out"
CHECK_RC=0
"$BIN" --config "$CFG" loadgen --agi "127.0.0.1:$APORT" --expect "$WORK/expect.txt" \
  --concurrency 8 >"$OUT/check.out" 2>&1 || CHECK_RC=$?
cp "$WORK/expect.txt" "$OUT/expect.txt"
printf '%.0f\t%s\n' "$(since)" "$(rss_kb "$SERVE_PID")" >>"$OUT/rss.tsv"
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode())' \
  "127.0.0.1:$MPORT" >"$OUT/metrics-end.txt" || true
grep -c 'redis sync interrupted' "$OUT/serve.log" >"$OUT/sync-interrupted.count" || true
grep -c 'loaded from redis' "$OUT/serve.log" >"$OUT/loaded.count" || true

REPORT_RC=0
SOAK_MINUTES=$SOAK_MINUTES RESTART_EVERY=$RESTART_EVERY REDIS_DOWN=$REDIS_DOWN RATE=$RATE \
  CONCURRENCY=$CONCURRENCY BLOCKED_SHARE=$BLOCKED_SHARE REPORT_EVERY=$REPORT_EVERY \
  LOADGEN_RC=$LOADGEN_RC CHECK_RC=$CHECK_RC COMMIT=$COMMIT PROTOCOL=$PROTOCOL \
  python3 tests/soak/report.py "$OUT" >"$OUT/report.md" || REPORT_RC=$?
cat "$OUT/report.md"
echo "soak: report in $OUT/report.md"
exit "$REPORT_RC"
