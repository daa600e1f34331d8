# shellcheck shell=bash
# Sourced by the bench scripts (run from the repository root): the binary to measure, a free
# loopback port, a file of generated numbers.

# Prints the binary to measure: BIN=/path/to/callguard measures that one (e.g. an older build,
# to compare two builds run by run); otherwise the release build of this tree, built first.
callguard_bin() {
    if [ -n "${BIN:-}" ]; then
        echo "$BIN"
    else
        cargo build --release --locked --quiet >&2
        echo "$PWD/target/release/callguard"
    fi
}

# A TCP port free on 127.0.0.1 now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# write_numbers FILE N: N distinct Russian mobile numbers, one per line, +79160000000 upwards.
write_numbers() {
    python3 -c "
import sys
with open(sys.argv[1], 'w') as f:
    for i in range(int(sys.argv[2])):
        f.write('+7%d\n' % (9160000000 + i))
" "$1" "$2"
}

# start_redis DIR: a private redis-server (127.0.0.1, a free port, no persistence, files in
# DIR); sets RPORT and REDIS_PID. Stop it with: redis-cli -p "$RPORT" shutdown nosave
start_redis() {
    RPORT=$(free_port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$1" --save "" --appendonly no \
        --daemonize yes --logfile "$1/redis.log"
    until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.1; done
    # shellcheck disable=SC2034 # read by the scripts that source this file
    REDIS_PID=$(redis-cli -p "$RPORT" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')
}

# work_with_redis: WORK = a temp dir holding a private redis-server (start_redis); at exit
# the server is shut down, the `serve` process SERVE_PID (if set) killed and WORK removed.
work_with_redis() {
    WORK=$(mktemp -d)
    trap cleanup_work EXIT
    start_redis "$WORK"
}

cleanup_work() {
    [[ -n ${SERVE_PID:-} ]] && kill "$SERVE_PID" 2>/dev/null || true
    [[ -n ${RPORT:-} ]] && redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$WORK"
}

# cpu_s PID: CPU seconds (user + system) the process has used so far.
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
