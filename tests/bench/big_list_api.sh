#!/usr/bin/env bash
# Admin API reads against a big embedded list (issue [8/8] at issue [5/8] scale): imports
# NUMBERS generated numbers, starts `callguard serve` with the API on, and prints the median of
# 5 requests for each read the web page makes, and the server's peak RSS.
#
#   bash tests/bench/big_list_api.sh                 # 1,000,000 numbers
#   NUMBERS=10000000 bash tests/bench/big_list_api.sh
#   BIN=/tmp/callguard-old bash tests/bench/big_list_api.sh   # another build
#
# Figures are printed, never asserted.
set -euo pipefail
NUMBERS=${NUMBERS:-1000000}
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/common.sh
. tests/bench/common.sh
bin=$(callguard_bin)
tmp=$(mktemp -d)
pid=""
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

: >"$tmp/empty.toml"
write_numbers "$tmp/numbers.txt" "$NUMBERS"
CALLGUARD_CONFIG=$tmp/empty.toml "$bin" --store "$tmp/lists.toml" import "$tmp/numbers.txt" | tail -1

port=$(free_port)
CALLGUARD_CONFIG=$tmp/empty.toml "$bin" api-token --global --name bench >"$tmp/token.txt"
token=$(sed -n 's/^token: //p' "$tmp/token.txt")
{
    printf '[api]\nlisten = "127.0.0.1:%s"\n' "$port"
    sed -n '/\[\[api.tokens\]\]/,$p' "$tmp/token.txt"
} >"$tmp/callguard.toml"
CALLGUARD_CONFIG=$tmp/callguard.toml "$bin" --store "$tmp/lists.toml" serve \
    --agi-listen 127.0.0.1:0 --esl-listen off --metrics-listen off 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 1200); do
    grep -q 'snapshot published' "$tmp/serve.log" && break
    sleep 0.1
done
echo "$("$bin" --version) with $NUMBERS rules"
for path in "/api/rules?limit=100" "/api/floods" "/api/rules?q=collector&limit=100" \
    "/api/rules?q=%2B79160000123"; do
    times=()
    for _ in 1 2 3 4 5; do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $token" \
            "http://127.0.0.1:$port$path")")
    done
    echo "GET $path median $(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p) s"
done
echo "server peak RSS: $(awk '/^VmHWM/ {print $2, $3}' "/proc/$pid/status")"
