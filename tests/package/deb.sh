#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on this machine (root), checks what it
# installed, verifies the systemd unit, runs the service the way the unit does (its user, its
# ExecStartPre and ExecStart command lines), places calls through it with the load generator,
# reloads and stops it with the unit's signals, then removes and purges the package and checks
# that nothing is left. Not part of CI (it changes the machine); run it on a throwaway Debian 12.
#
#   bash tests/package/deb.sh            # build + full install/run/remove cycle
#   DEB=path/to/callguard.deb bash tests/package/deb.sh   # test an already built package
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" -eq 0 ] || { echo "deb.sh: run as root (it installs a package)" >&2; exit 2; }
if dpkg -s callguard >/dev/null 2>&1; then
    echo "deb.sh: callguard is already installed; remove it first (dpkg -P callguard)" >&2
    exit 2
fi

step() { printf '\n== %s\n' "$*"; }
fail() { echo "deb.sh: FAIL: $*" >&2; exit 1; }

if [ -z "${DEB:-}" ]; then
    step "build"
    command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
    cargo deb --locked
    DEB=$(find target/debian -name 'callguard_*.deb' -printf '%T@ %p\n' | sort -rn | head -n 1 | cut -d' ' -f2)
fi
echo "package: $DEB ($(du -h "$DEB" | cut -f1))"
dpkg-deb --info "$DEB" | sed -n '/Package:/,/Description:/p'

step "install"
command -v systemd-analyze >/dev/null 2>&1 || apt-get install -y -qq systemd >/dev/null
apt-get install -y -qq "./$DEB" >/dev/null 2>&1 || apt-get install -y "$(realpath "$DEB")"
unit=/lib/systemd/system/callguard.service
[ -f "$unit" ] || unit=/usr/lib/systemd/system/callguard.service
for f in /usr/bin/callguard /etc/callguard/callguard.toml "$unit" \
    /usr/share/callguard/dialplan/asterisk/extensions_callguard.conf \
    /usr/share/callguard/dialplan/freeswitch/callguard_outbound.xml \
    /usr/share/callguard/dialplan/freepbx/extensions_custom.conf \
    /usr/share/callguard/grafana/callguard.json /usr/share/callguard/prometheus/alerts.yml \
    /usr/share/doc/callguard/copyright; do
    [ -e "$f" ] || fail "$f not installed"
done
getent passwd callguard >/dev/null || fail "no callguard user"
[ "$(stat -c '%U:%G %a' /etc/callguard/callguard.toml)" = "root:callguard 640" ] ||
    fail "config is $(stat -c '%U:%G %a' /etc/callguard/callguard.toml), want root:callguard 640"
[ "$(stat -c '%U:%G' /var/lib/callguard)" = "callguard:callguard" ] || fail "/var/lib/callguard owner"
dpkg-query -W -f='${Conffiles}\n' callguard | grep -q /etc/callguard/callguard.toml ||
    fail "config is not a conffile"
echo "installed: binary, config (root:callguard 640, conffile), unit, dialplan, dashboard, user"

step "systemd-analyze verify"
systemd-analyze verify "$unit"
for line in User=callguard ProtectSystem=strict NoNewPrivileges=yes StateDirectory=callguard; do
    grep -q "^$line\$" "$unit" || fail "unit is missing $line"
done

step "run as the unit does"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
agi=$(free_port); esl=$(free_port); metrics=$(free_port)
# The unit's own command lines; only the ports move, through the environment, so a PBX
# already on this machine keeps its 4573.
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
start=$(sed -n 's/^ExecStart=//p' "$unit")
# setpriv execs (runuser would stay in between and take the unit's signals itself).
as_service() {
    setpriv --reuid=callguard --regid=callguard --init-groups -- \
        env CALLGUARD_AGI__LISTEN="127.0.0.1:$agi" \
        CALLGUARD_ESL__LISTEN="127.0.0.1:$esl" CALLGUARD_METRICS__LISTEN="127.0.0.1:$metrics" "$@"
}
# shellcheck disable=SC2086 # the unit's command lines are split on spaces, as systemd does
as_service $pre
log=$(mktemp)
# shellcheck disable=SC2086
# exec: $! must be callguard itself (a backgrounded function is a subshell in between).
(exec setpriv --reuid=callguard --regid=callguard --init-groups -- env \
    CALLGUARD_AGI__LISTEN="127.0.0.1:$agi" CALLGUARD_ESL__LISTEN="127.0.0.1:$esl" \
    CALLGUARD_METRICS__LISTEN="127.0.0.1:$metrics" $start) >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
ready=""
for _ in $(seq 1 100); do
    if python3 - "$metrics" <<'PY' 2>/dev/null; then ready=yes; break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
PY
    sleep 0.1
done
[ -n "$ready" ] || { cat "$log"; fail "service did not become ready"; }
echo "ready: agi 127.0.0.1:$agi, /readyz 200"

# Calls through the installed binary: the load generator writes its block list into the
# service's store (as the service user) and checks every verdict.
as_service /usr/bin/callguard --config /etc/callguard/callguard.toml loadgen \
    --agi "127.0.0.1:$agi" --calls 300 --concurrency 4 --blocked-share 0.3
[ "$(stat -c '%U' /var/lib/callguard/lists.toml)" = "callguard" ] || fail "lists not owned by callguard"

step "reload (ExecReload) and stop (KillSignal)"
kill -HUP "$pid"
for _ in $(seq 1 50); do grep -q "config reloaded" "$log" && break; sleep 0.1; done
grep -q "config reloaded" "$log" || { cat "$log"; fail "SIGHUP did not reload"; }
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] || { cat "$log"; fail "exit status $status after SIGTERM"; }
echo "reloaded on SIGHUP, exited 0 on SIGTERM"

step "remove and purge"
apt-get remove -y -qq callguard >/dev/null
[ ! -e /usr/bin/callguard ] || fail "binary left after remove"
[ -e /etc/callguard/callguard.toml ] || fail "remove must keep the config (conffile)"
[ -e /var/lib/callguard/lists.toml ] || fail "remove must keep the lists"
apt-get purge -y -qq callguard >/dev/null
for f in /etc/callguard /var/lib/callguard "$unit" /usr/share/callguard; do
    [ ! -e "$f" ] || fail "$f left after purge"
done
echo "removed: binary gone, config and lists kept; purged: nothing left"
echo
echo "deb.sh: OK"
