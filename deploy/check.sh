#!/usr/bin/env bash
# Offline checks of the deploy files (no Docker engine, no cluster needed):
#   - docker compose:  `docker-compose config` accepts deploy/docker/docker-compose.yml, alone
#                      and with the 3-node RabbitMQ override docker-compose.cluster.yml
#   - Prometheus:      `promtool check config` on the scrape configs, `promtool check rules`
#                      and the rule unit tests (`promtool test rules`)
#   - Grafana:         the dashboard is valid JSON and every query parses as PromQL
#   - Kubernetes:      every manifest (Relay's, and the 3-node RabbitMQ in kubernetes/rabbitmq)
#                      validates (strict) against the Kubernetes schemas with kubernetes-validate;
#                      the KEDA objects against deploy/kubernetes/keda.schema.json
#   - RabbitMQ:        definitions.json is well formed; policies.sh parses; the copies of
#                      advanced.config and rabbitmq.conf in the Kubernetes ConfigMap match
#   - shell:           every script under deploy/ parses (bash -n)
#
# Usage: deploy/check.sh        Needs promtool (Debian: prometheus), docker-compose (Debian:
# docker-compose) and the PyPI package kubernetes-validate; .ci/run installs them.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deploy=$root/deploy
failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/relay-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

step() { printf '\n--- %s\n' "$*"; }
fail() {
  printf 'check.sh: FAILED: %s\n' "$*" >&2
  failed=1
}
need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "check.sh: $1 is not installed ($2)" >&2
    exit 1
  }
}
need promtool "apt-get install prometheus"
need docker-compose "apt-get install docker-compose"
python3 -c 'import kubernetes_validate' 2>/dev/null || {
  echo "check.sh: kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)" >&2
  exit 1
}
need python3 "apt-get install python3"

step "docker-compose config"
(cd "$deploy/docker" && docker-compose -f docker-compose.yml config -q) || fail "docker-compose.yml"
services=$(cd "$deploy/docker" && docker-compose config --services)
for service in rabbitmq postgres consumer-api ingest dispatch prometheus grafana; do
  grep -qx "$service" <<<"$services" || fail "docker-compose.yml has no service $service"
done
cluster_services=$(cd "$deploy/docker" &&
  docker-compose -f docker-compose.yml -f docker-compose.cluster.yml config --services) ||
  fail "docker-compose.cluster.yml"
for service in rabbitmq rabbitmq-2 rabbitmq-3 ingest dispatch consumer-api; do
  grep -qx "$service" <<<"$cluster_services" || fail "the cluster compose has no service $service"
done
(cd "$deploy/docker" && docker-compose -f docker-compose.yml -f docker-compose.cluster.yml config) |
  python3 -c '
import sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
for name in ("ingest", "dispatch", "consumer-api"):
    urls = services[name]["environment"]["RELAY__AMQP__URLS"].split(",")
    assert len(urls) == 3, (name, urls)
' || fail "the cluster compose must give Relay all three node URLs"
(cd "$deploy/docker" && docker-compose config) | python3 -c '
import sys, yaml
env = yaml.safe_load(sys.stdin)["services"]["dispatch"]["environment"]
assert "RELAY__DISPATCH__DIRECTORY_KEY" in env, "no dispatcher directory key"
leaked = [k for k in env if "ADMIN" in k or "DATABASE" in k or "PUBLISHER" in k]
assert not leaked, f"dispatchers are given {leaked}"
' || fail "compose dispatchers must hold the scoped directory key only"
grep -q 'container_name' "$deploy/docker/docker-compose.yml" &&
  fail "container_name prevents docker-compose --scale"
grep -Eq '^USER 65532' "$deploy/docker/Dockerfile" || fail "the Dockerfile's runtime stage must run as non-root"

step "promtool check config / rules / test rules"
promtool check config "$deploy/prometheus/prometheus.yml" || fail "prometheus.yml"
promtool check rules "$deploy/prometheus/alerts.yml" || fail "alerts.yml"
(cd "$deploy/prometheus" && promtool test rules alerts.test.yml) || fail "alerts.test.yml"
# Debian builds Prometheus without Kubernetes service discovery, so its promtool refuses
# kubernetes_sd_configs. Where that is the case, the rest of the file (relabelling, rule
# files) is checked with the discovery block swapped for a static one.
k8s_config=$deploy/prometheus/prometheus-kubernetes.yml
if ! out=$(promtool check config "$k8s_config" 2>&1); then
  if grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
    echo "promtool lacks Kubernetes discovery; checking prometheus-kubernetes.yml with static targets"
    cp "$deploy/prometheus/alerts.yml" "$tmp/alerts.yml"
    python3 - "$k8s_config" "$tmp/prometheus-kubernetes.yml" <<'PY' || fail "prometheus-kubernetes.yml"
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for job in config["scrape_configs"]:
    assert job.pop("kubernetes_sd_configs"), job["job_name"]
    job["static_configs"] = [{"targets": ["pod:9090"]}]
yaml.safe_dump(config, open(sys.argv[2], "w"))
PY
    promtool check config "$tmp/prometheus-kubernetes.yml" || fail "prometheus-kubernetes.yml"
  else
    printf '%s\n' "$out" >&2
    fail "prometheus-kubernetes.yml"
  fi
else
  printf '%s\n' "$out"
fi

step "grafana dashboard"
python3 - "$deploy/grafana/relay.json" "$tmp/dashboard-rules.yml" <<'PY' || fail "grafana/relay.json"
import json, sys, yaml
dashboard = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            exprs.append(t["expr"])
walk(dashboard["panels"])
assert dashboard["uid"] and exprs, "dashboard without uid or queries"
ids = [p["id"] for p in dashboard["panels"]]
assert len(ids) == len(set(ids)), "duplicate panel ids"
# Every query as a recording rule, so promtool parses it as PromQL.
rules = [{"record": f"relay:dashboard_query_{i}", "expr": e.replace("$__rate_interval", "5m")}
         for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} queries in {len(dashboard['panels'])} panels")
PY
promtool check rules "$tmp/dashboard-rules.yml" >/dev/null || fail "a dashboard query is not valid PromQL"
for file in "$deploy"/grafana/provisioning/*/*.yml; do
  python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$file" || fail "$file"
done

step "kubernetes-validate (strict)"
manifests=()
for file in "$deploy"/kubernetes/*.yaml "$deploy"/kubernetes/rabbitmq/*.yaml; do
  [[ $(basename "$file") == kustomization.yaml ]] && continue
  manifests+=("$file")
done
python3 -m kubernetes_validate --strict --quiet "${manifests[@]}" || fail "Kubernetes manifests"
python3 - "$deploy/kubernetes" <<'PY' || fail "KEDA objects or kustomization"
import json, os, sys, yaml, jsonschema
base = sys.argv[1]
schemas = json.load(open(os.path.join(base, "keda.schema.json")))
checked = 0
for name in sorted(os.listdir(base)):
    if not name.endswith(".yaml"):
        continue
    for doc in yaml.safe_load_all(open(os.path.join(base, name))):
        if doc and doc.get("apiVersion", "").startswith("keda.sh/"):
            jsonschema.validate(doc, schemas[doc["kind"]])
            checked += 1
for root in (base, os.path.join(base, "rabbitmq")):
    kustomization = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
    for resource in kustomization["resources"]:
        assert os.path.exists(os.path.join(root, resource)), f"{root}: kustomization lists missing {resource}"
assert checked >= 2, "no KEDA ScaledObject/TriggerAuthentication found"
# Least privilege: the dispatchers' pods see only their own Secret, which holds the scoped
# directory key and never the admin key.
secrets = {d["metadata"]["name"]: d["stringData"]
           for d in yaml.safe_load_all(open(os.path.join(base, "secret.template.yaml"))) if d}
assert "RELAY__DISPATCH__DIRECTORY_KEY" in secrets["relay-dispatch"], "no dispatcher directory key"
assert not any("ADMIN" in key for key in secrets["relay-dispatch"]), "the dispatcher Secret holds the admin key"
for doc in yaml.safe_load_all(open(os.path.join(base, "dispatch.yaml"))):
    if doc and doc["kind"] == "Deployment":
        refs = [e["secretRef"]["name"] for c in doc["spec"]["template"]["spec"]["containers"]
                for e in c.get("envFrom", []) if "secretRef" in e]
        assert refs == ["relay-dispatch"], f"dispatcher pods read the Secrets {refs}"
print(f"{checked} KEDA objects valid; kustomization resources exist; dispatchers hold no admin key")
PY

step "rabbitmq definitions and scripts"
python3 - "$deploy/rabbitmq/definitions.json" <<'PY' || fail "rabbitmq/definitions.json"
import json, sys
d = json.load(open(sys.argv[1]))
assert {p["name"] for p in d["policies"]} >= {"relay-parked", "relay-records"}
assert not d.get("queues"), "queues are declared by Relay itself, with their arguments"
print(f"{len(d['policies'])} policies, {len(d['users'])} users")
PY
python3 - "$deploy" <<'PY' || fail "kubernetes/rabbitmq/configmap.yaml differs from deploy/rabbitmq"
import os, sys, yaml
deploy = sys.argv[1]
data = yaml.safe_load(open(os.path.join(deploy, "kubernetes/rabbitmq/configmap.yaml")))["data"]
shipped = open(os.path.join(deploy, "rabbitmq/advanced.config")).read()
assert data["advanced.config"] == shipped, "advanced.config is not a copy of deploy/rabbitmq/advanced.config"
settings = [l for l in open(os.path.join(deploy, "rabbitmq/rabbitmq.conf")).read().splitlines()
            if l.strip() and not l.startswith("#") and not l.startswith("definitions.")]
copied = data["rabbitmq.conf"].splitlines()
missing = [l for l in settings if l not in copied]
assert not missing, f"rabbitmq.conf settings missing from the ConfigMap: {missing}"
print(f"ConfigMap matches deploy/rabbitmq ({len(settings)} settings)")
PY
for script in "$deploy"/*.sh "$deploy"/*/*.sh; do
  bash -n "$script" || fail "$script does not parse"
done

if ((failed)); then
  echo "check.sh: some deploy checks failed" >&2
  exit 1
fi
echo
echo "check.sh: all deploy checks passed"
