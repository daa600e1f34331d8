"""Writes the soak test's markdown report (stdout) from the files tests/soak/soak.sh left in
OUT (argv[1]); exits 1 when a requirement failed. Python 3 standard library only."""

import csv
import os
import re
import sys

out = sys.argv[1]
env = os.environ


def path(name):
    return os.path.join(out, name)


def read(name, default=""):
    try:
        with open(path(name)) as f:
            return f.read()
    except OSError:
        return default


def tsv(name):
    with open(path(name)) as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def num(pattern, text, default=None):
    m = re.search(pattern, text)
    return int(m.group(1)) if m else default


minutes = int(env.get("SOAK_MINUTES", "30"))
restart_every = int(env.get("RESTART_EVERY", "5"))
rate = float(env.get("RATE", "1000"))

# --- calls
load = read("loadgen.out")
intervals = []
for line in load.splitlines():
    if line.startswith("interval "):
        intervals.append(dict(w.split("=", 1) for w in line.split()[1:]))
calls = num(r"(?m)^calls (\d+) in", load, 0)
wrong = num(r"wrong verdicts (\d+)", load)
without = num(r"calls without verdict (\d+)", load)
ended = num(r"session ended (\d+)", load)
timed_out = num(r"timed out (\d+)", load)
connect_errors = num(r"connect errors (\d+)", load)
blocked = num(r"verdicts: block (\d+)", load)
allowed = num(r"verdicts: block \d+ allow (\d+)", load)
latency = re.search(r"latency us: p50 (\d+) p99 (\d+) p99\.9 (\d+) max (\d+)", load)
server_line = next((l for l in load.splitlines() if l.startswith("in-server")), "")
mismatches = [l for l in load.splitlines() if l.startswith("mismatch: ")]

# --- Redis restarts
restarts = tsv("restarts.tsv")
ups = [float(r["t_s"]) for r in restarts if r["what"] == "up"]
stops = [float(r["t_s"]) for r in restarts if r["what"] == "stop"]
planned = len([i for i in range(1, minutes + 1) if i * restart_every < minutes])

# --- RSS
rss_rows = tsv("rss.tsv")
rss = [(int(float(r["t_s"])), int(r["rss_kb"])) for r in rss_rows]
loads = [r.get("load1") or "?" for r in rss_rows]
rss_start = rss[0][1] if rss else 0
warm = next((kb for t, kb in rss if t >= 55), rss_start)
# Bounded tables fill during the first minutes (the flood detectors track up to
# flood.max_tracked = 100,000 keys each, and every allowed call is a new number), so flat
# means: the end within 10% of the sample at half time.
mid = next((kb for t, kb in rss if t >= minutes * 30 - 5), rss_start)
rss_end = rss[-1][1] if rss else 0
rss_max = max((kb for _, kb in rss), default=0)
rss_flat = mid > 0 and rss_end <= mid * 1.10

# --- edits
rows = tsv("edits.tsv")
attempts = len(rows)
failed_attempts = [r for r in rows if r["rc"] != "0"]
acked = [r for r in rows if r["rc"] == "0"]
acked_blocks = [r for r in acked if r["op"] == "block"]
acked_unblocks = [r for r in acked if r["op"] == "unblock"]
retried = [r for r in acked if int(r["attempt"]) > 1]
edits_tried = {(r["op"], r["number"]) for r in rows}
gave_up = len(edits_tried) - len({(r["op"], r["number"]) for r in acked})
blocked_ok = {r["number"] for r in acked_blocks}
# An unblock acknowledged at the first attempt that found nothing: the block it undoes was lost.
lost_at_unblock = [
    r["number"]
    for r in acked_unblocks
    if r["attempt"] == "1" and "was not on" in r["output"] and r["number"] in blocked_ok
]
# Retried unblocks that found nothing: the failed attempt may have removed it already.
ambiguous_unblocks = [
    r for r in acked_unblocks if r["attempt"] != "1" and "was not on" in r["output"]
]
expect = [l.split() for l in read("expect.txt").splitlines() if l.strip()]
exists = read("redis-exists.out").split()
lost_redis = []
for i, (caller, verdict) in enumerate(expect):
    present = i < len(exists) and exists[i] == "1"
    if present != (verdict == "block"):
        lost_redis.append(f"+7{caller[1:]} should be {'present' if verdict == 'block' else 'absent'}")
check = read("check.out")
check_calls = num(r"(?m)^calls (\d+) in", check, 0)
check_wrong = num(r"wrong verdicts (\d+)", check)
check_without = num(r"calls without verdict (\d+)", check)
check_errors = num(r"connect errors (\d+)", check)
lost_server = [l[len("mismatch: "):] for l in check.splitlines() if l.startswith("mismatch: ")]
server_lost = (
    None
    if check_wrong is None
    else check_wrong + (check_without or 0) + (check_errors or 0)
)
lost = len(lost_redis) + len(lost_at_unblock) + (server_lost if server_lost is not None else 1)
if check_calls != len(expect):
    lost += 1

# --- server log
interrupted = read("sync-interrupted.count", "?").strip()
loaded = read("loaded.count", "?").strip()

no_verdict_total = None if without is None else without + (connect_errors or 0)
expected_calls = int(rate * 60 * minutes)
checks = [
    (
        "calls without verdict = 0",
        f"{no_verdict_total} (session ended {ended}, timed out {timed_out}, connect errors {connect_errors})",
        no_verdict_total == 0,
    ),
    ("wrong verdicts = 0", f"{wrong}", wrong == 0),
    (
        f"calls placed at {rate:.0f}/s for {minutes} min",
        f"{calls:,} of {expected_calls:,}",
        calls >= expected_calls * 0.99,
    ),
    ("edits lost = 0", f"{lost} (of {len(acked):,} acknowledged)", lost == 0),
    (
        "RSS flat (end within 10% of half time)",
        f"{rss_start / 1024:.1f} MiB before load, {warm / 1024:.1f} MiB at 1 min, "
        f"{mid / 1024:.1f} MiB at half time, {rss_end / 1024:.1f} MiB at the end, "
        f"max {rss_max / 1024:.1f} MiB; second half "
        f"{(rss_end - mid) / 1024 / max(minutes / 2, 1e-9):+.2f} MiB a minute",
        rss_flat,
    ),
    (
        f"Redis restarted every {restart_every} min",
        f"{len(ups)} of {planned} restarts done; server reloaded from Redis {loaded} times "
        f"(start + restarts)",
        len(ups) == planned,
    ),
]
passed = all(ok for _, _, ok in checks)

p = print
p(f"### Soak run: {minutes} min at {rate:.0f} calls/s, Redis restarted every {restart_every} min")
p()
p(f"Commit `{env.get('COMMIT', '?')}`. Parameters: SOAK_MINUTES={minutes} RESTART_EVERY={restart_every} "
  f"PROTOCOL={env.get('PROTOCOL', 'agi')} REDIS_DOWN={env.get('REDIS_DOWN')}s RATE={rate:.0f} CONCURRENCY={env.get('CONCURRENCY')} "
  f"BLOCKED_SHARE={env.get('BLOCKED_SHARE')} REPORT_EVERY={env.get('REPORT_EVERY')}; "
  f"loadgen exit {env.get('LOADGEN_RC')}, edit check exit {env.get('CHECK_RC')}.")
p()
p("| requirement | result | passed |")
p("|---|---|---|")
for name, figure, ok in checks:
    p(f"| {name} | {figure} | {'yes' if ok else '**NO**'} |")
p()
p(f"**Overall: {'PASSED' if passed else 'FAILED'}.**")
p()
p(f"Calls: {calls:,} (block {blocked:,}, allow {allowed:,}); end-to-end latency over the whole run "
  f"in µs: p50 {latency.group(1) if latency else '?'}, p99 {latency.group(2) if latency else '?'}, "
  f"p99.9 {latency.group(3) if latency else '?'}, max {latency.group(4) if latency else '?'}. "
  f"{server_line}.")
p()
p("Per interval (end-to-end µs; `server p99` is `callguard_verdict_seconds`, bucket upper bound; "
  "`R` marks an interval in which Redis was stopped):")
p()
p("| at | calls | calls/s | p50 | p99 | p99.9 | max | server p99 | block | allow | without verdict | wrong | |")
p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
prev = 0.0
for iv in intervals:
    at = float(iv["at"].rstrip("s"))
    mark = "R" if any(prev <= s < at for s in stops) else ""
    prev = at
    wv = int(iv["no_verdict"]) + int(iv["timed_out"]) + int(iv["connect_errors"])
    p(f"| {iv['at']} | {int(iv['calls']):,} | {float(iv['calls/s']):,.0f} | {iv['p50_us']} | {iv['p99_us']} "
      f"| {iv['p99.9_us']} | {iv['max_us']} | ≤ {iv['server_p99_le_us']} | {iv['block']} | {iv['allow']} "
      f"| {wv} | {iv['wrong']} | {mark} |")
if intervals:
    p99s = [int(iv["p99_us"]) for iv in intervals]
    p()
    p(f"p99 over the intervals: {min(p99s):,} to {max(p99s):,} µs.")
p()
p("Server resident memory (VmRSS), seconds from the start of the load:")
p()
p("| t (s) | " + " | ".join(str(t) for t, _ in rss) + " |")
p("|---|" + "---|" * len(rss))
p("| MiB | " + " | ".join(f"{kb / 1024:.1f}" for _, kb in rss) + " |")
p("| load average (1 min, 2 cores) | " + " | ".join(loads) + " |")
p()
p(f"Edits (`callguard block` / `unblock`, one at a time, each retried until acknowledged): "
  f"{attempts:,} attempts, {len(acked):,} acknowledged ({len(acked_blocks):,} blocks, "
  f"{len(acked_unblocks):,} unblocks), {len(failed_attempts):,} attempts failed (Redis down), "
  f"{len(retried):,} edits needed a retry, {gave_up} given up. "
  f"Checked at the end: {len(expect):,} numbers, each in Redis (`EXISTS` of the canonical key) "
  f"and by one FastAGI call to the running server in another spelling: "
  f"{len(lost_redis)} wrong in Redis, {server_lost} wrong at the server, "
  f"{len(lost_at_unblock)} blocks already gone when their unblock ran"
  f"{f', {len(ambiguous_unblocks)} retried unblocks found nothing left (their failed attempt had removed it)' if ambiguous_unblocks else ''}.")
for what in lost_redis[:20] + lost_server[:20] + lost_at_unblock[:20]:
    p(f"- lost: {what}")
p()
p("Redis restarts (s from the start: stopped, down, up again): "
  + ", ".join(
      f"{s:.0f}/{u:.0f}" for s, u in zip(stops, ups)
  )
  + f". The server logged `redis sync interrupted` {interrupted} times and `loaded from redis` {loaded} times.")
metric_lines = [
    l
    for l in read("metrics-end.txt").splitlines()
    if re.match(r"callguard_(connection_errors_total|store_errors_total|store_up|active_bans)\b", l)
    and not l.endswith(" 0")
]
p()
p("Server counters at the end (non-zero only): " + (", ".join(f"`{l}`" for l in metric_lines) or "none") + ".")
if mismatches:
    p()
    p("First wrong calls of the load:")
    for m in mismatches[:20]:
        p(f"- {m}")
sys.exit(0 if passed else 1)
