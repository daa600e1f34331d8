#!/usr/bin/env bash
# Validates the Prometheus config and alert rules with promtool (Debian package `prometheus`),
# unit-tests the alerts against synthetic series (alerts_test.yml), and parses every PromQL
# query of the Grafana dashboard (Grafana's $variables replaced by plain values).
# Not part of CI: the normal test suite (tests/it/metrics.rs) checks these files' structure
# and that every metric they name is one callguard exports.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: promtool not found; install it with: apt-get install --no-install-recommends prometheus" >&2
    exit 2
fi
promtool check config prometheus.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml

dashboard=../../grafana/dashboards/callguard.json
rules=$(mktemp --suffix=.yml)
trap 'rm -f "$rules"' EXIT
python3 - "$dashboard" >"$rules" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
subst = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*", "$tenant": ".*"}
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    print(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}")
PY
echo "Checking dashboard queries"
promtool check rules "$rules"
