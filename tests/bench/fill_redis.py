#!/usr/bin/env python3
"""Writes Redis protocol (RESP) for `redis-cli --pipe`: N exact block numbers and M masks in
callguard's key layout, as a bulk import would leave them.

    python3 tests/bench/fill_redis.py 10000000 100000 | redis-cli -p PORT --pipe

Exact numbers: +74XXXXXXXXX (apart from the +79 numbers `callguard loadgen` uses), spread by a prime stride (distinct for N < 10^9). Masks:
+78AADDDXXXX (AA = 00..99, DDD = 000..999), the shape of "a collector's exchange".
"""
import sys

VALUE = b'{"reason":"spam list","added_by":"import","added_at":"2026-11-29T07:00:00Z"}'


def resp_set(key: bytes, value: bytes) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value)


def main() -> None:
    n = int(sys.argv[1])
    masks = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rules_only = "--rules" in sys.argv[3:]
    out = sys.stdout.buffer
    batch = []
    for i in range(n):
        number = b"+7%d" % (4_000_000_000 + (i * 7919) % 1_000_000_000)
        batch.append(number + b"\n" if rules_only else resp_set(b"callguard:block:" + number, VALUE))
        if len(batch) == 10_000:
            out.write(b"".join(batch))
            batch.clear()
    for i in range(masks):
        area, exchange = divmod(i % 100_000, 1000)
        mask = b"+78%02d%03dXXXX" % (area, exchange)
        batch.append(mask + b"\n" if rules_only else resp_set(b"callguard:block:" + mask, b"collector exchange"))
    out.write(b"".join(batch))


if __name__ == "__main__":
    main()
