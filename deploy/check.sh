#!/usr/bin/env bash
# Static checks of Tally's deployment artifacts; CI runs this from the
# repository root (`bash deploy/check.sh`). No Docker engine, cluster,
# Prometheus server or Grafana is needed.
#
# Needs: docker-compose (1.29, Debian's package, or the Compose v2 plugin),
# promtool, python3 (standard library only). Uses kubectl (for kustomize) if
# present and says so when it is not.
#
# Exits non-zero on the first failed check.
set -euo pipefail

cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }

need() {
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "check.sh: $1 is required but not on PATH" >&2
		exit 1
	fi
}

need promtool
need python3

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step "docker-compose.yml"
if command -v docker-compose >/dev/null 2>&1; then
	compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
else
	echo "check.sh: neither docker-compose nor the docker compose plugin is on PATH" >&2
	exit 1
fi
"${compose[@]}" -f docker-compose.yml config -q
ok "${compose[*]} -f docker-compose.yml config -q"

step "Prometheus configuration and alert rules (promtool $(promtool --version 2>&1 | awk 'NR==1{print $3}'))"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules/tally.yml
promtool test rules deploy/prometheus/rules/tally_test.yml
ok "promtool check config, check rules, test rules"

step "Grafana dashboards and provisioning"
dashboards=(deploy/grafana/dashboards/*.json)
for d in "${dashboards[@]}"; do
	python3 -m json.tool "$d" >/dev/null
	ok "$d is valid JSON"
done
# Every PromQL expression of every dashboard, as a recording rule, so
# promtool's parser checks it. Grafana's variables are replaced by values of
# the right type first.
python3 - "$tmp/dashboard_rules.yml" "${dashboards[@]}" <<'PY'
import json, re, sys

out, files = sys.argv[1], sys.argv[2:]

def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))

def substitute(expr):
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr)
    expr = re.sub(r"\$\{?datasource\}?", "", expr)
    # Any other variable (none today) stands for a label value.
    expr = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_:]*\}|\$[A-Za-z_][A-Za-z0-9_]*", ".*", expr)
    return expr

n = 0
with open(out, "w") as f:
    f.write("groups:\n  - name: dashboard-expressions\n    rules:\n")
    for path in files:
        with open(path) as d:
            dash = json.load(d)
        for p in panels(dash.get("panels", [])):
            for t in p.get("targets", []):
                expr = t.get("expr", "").strip()
                if not expr:
                    continue
                n += 1
                f.write("      - record: dashboard:expr_%d\n" % n)
                # A JSON string is a valid YAML double-quoted scalar.
                f.write("        expr: %s\n" % json.dumps(substitute(expr)))
                f.write("        labels: {panel: %s}\n" % json.dumps("%s: %s" % (path, p.get("title", ""))))
if n == 0:
    sys.exit("no PromQL expressions found in " + " ".join(files))
print("   %d dashboard expressions extracted" % n)
PY
promtool check rules "$tmp/dashboard_rules.yml"
ok "every dashboard expression parses as PromQL"
for f in deploy/grafana/provisioning/datasources/*.yml deploy/grafana/provisioning/dashboards/*.yml; do
	grep -q '^apiVersion: 1$' "$f" || { echo "$f: missing 'apiVersion: 1'" >&2; exit 1; }
done
ok "provisioning files declare apiVersion 1"

step "YAML syntax"
if python3 -c 'import yaml' >/dev/null 2>&1; then
	# PyYAML, when installed, parses every YAML file under deploy/ (the
	# compose file is parsed by docker-compose above).
	python3 - <<'PY'
import glob, sys, yaml
files = sorted(glob.glob("deploy/**/*.yml", recursive=True) + glob.glob("deploy/**/*.yaml", recursive=True))
for f in files:
    with open(f) as fh:
        try:
            list(yaml.safe_load_all(fh))
        except yaml.YAMLError as e:
            sys.exit("%s: %s" % (f, e))
print("   ok: %d YAML files parse" % len(files))
PY
else
	echo "   skipped: python3 has no yaml module (promtool, docker-compose and kubectl still parse their files)"
fi

step "Kubernetes manifests"
if command -v kubectl >/dev/null 2>&1; then
	for k in deploy/k8s/base deploy/k8s/overlays/*/; do
		k="${k%/}"
		kubectl kustomize "$k" >"$tmp/rendered.yaml"
		ok "kubectl kustomize $k renders ($(grep -c '^kind:' "$tmp/rendered.yaml") objects)"
	done
else
	echo "   skipped: kubectl is not on PATH (kubectl kustomize not run)"
fi

step "all deploy checks passed"
