#!/usr/bin/env bash
# Offline validation of matchd's Kubernetes manifests and Dockerfile (no
# cluster, no container engine). Exits non-zero with a message per problem.
#
#   tests/k8s/validate.sh [--matchd PATH/TO/matchd]
#
# With --matchd, every flag that the manifests and the Dockerfile's CMD pass
# is also checked against that binary's --help (a flag it does not know
# would crash-loop the pods).
#
# 1. Renders k8s/base, k8s/overlays/dev and k8s/overlays/prod with
#    `kubectl kustomize`: with Debian 12's kubectl 1.20 (kustomize v2; taken
#    from the Debian archive into tests/k8s/.cache when kubernetes-client is
#    not installed) and, when a different kubectl is on PATH, with that one
#    too. Both must produce the same objects.
# 2. yamllint on every YAML file under k8s/ and tests/k8s/.
# 3. tests/k8s/validate.mjs: each object against the Kubernetes schema
#    (kubernetes-models), unknown fields (tsc --strict over the same objects),
#    matchd's policies (non-root, probes, resources, drain, selectors, ...),
#    the Dockerfile (dockerfile-utils, plus its own rules), and the Grafana
#    dashboard (structure, metric names, the panels operators need).
# 4. promtool (Debian's prometheus package, unpacked into tests/k8s/.cache
#    unless installed): `check rules` on k8s/prometheus-alerts.yaml and on
#    every dashboard query, `test rules` on tests/k8s/alerts_test.yaml.
#
# Installs what is missing on Debian 12: yamllint, nodejs and npm (apt), and
# the locked npm packages (npm ci into tests/k8s/node_modules).
set -euo pipefail

matchd=""
while [ $# -gt 0 ]; do
  case "$1" in
    --matchd) matchd="$2"; shift 2 ;;
    --matchd=*) matchd="${1#*=}"; shift ;;
    *) echo "usage: $0 [--matchd PATH]" >&2; exit 2 ;;
  esac
done
[ -z "$matchd" ] || matchd="$(realpath "$matchd")"

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$here/.cache"
cd "$repo"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
die() { echo "FAIL: $*" >&2; exit 1; }
apt_updated=0
apt_install() {
  [ "$apt_updated" -eq 1 ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools ---------------------------------------------------------------
command -v yamllint >/dev/null || { echo "== installing yamllint"; apt_install yamllint; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing nodejs npm"; apt_install nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js $node_major is too old; 18 or newer is needed"
if [ ! -f "$here/node_modules/.package-lock.json" ] \
    || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  echo "== npm ci (tests/k8s)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci failed in tests/k8s"
fi

# unpack_deb PACKAGE: the package's files under tests/k8s/.cache/PACKAGE,
# downloaded from the Debian archive (not installed).
unpack_deb() {
  local pkg="$1" dl
  echo "== fetching Debian's $pkg into tests/k8s/.cache (unpacked, not installed)"
  dl="$(mktemp -d)"; chmod 755 "$dl"
  (cd "$dl" && { apt-get download "$pkg" >/dev/null 2>&1 \
      || { as_root apt-get update -qq && apt-get download "$pkg" >/dev/null 2>&1; }; }) \
    || die "apt-get download $pkg failed"
  rm -rf "${cache:?}/$pkg"; mkdir -p "$cache"
  dpkg-deb -x "$dl"/"$pkg"_*.deb "$cache/$pkg"
  rm -rf "$dl"
}

# Debian's kubectl: the installed kubernetes-client package, or its binary
# unpacked from the archive (not installed: it would clash with another
# package's /usr/bin/kubectl).
if dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null | grep -q "install ok installed"; then
  debian_kubectl=/usr/bin/kubectl
else
  debian_kubectl="$cache/kubernetes-client/usr/bin/kubectl"
  [ -x "$debian_kubectl" ] || unpack_deb kubernetes-client
fi
promtool="$(command -v promtool || true)"
if [ -z "$promtool" ]; then
  promtool="$cache/prometheus/usr/bin/promtool"
  [ -x "$promtool" ] || unpack_deb prometheus
fi

kubectls=("$debian_kubectl")
if other="$(command -v kubectl)" && [ "$(readlink -f "$other")" != "$(readlink -f "$debian_kubectl")" ] \
    && "$other" kustomize --help >/dev/null 2>&1; then
  kubectls=("$other" "$debian_kubectl")   # the first one's output is what gets checked
fi

# --- render ----------------------------------------------------------------
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in "${!kubectls[@]}"; do
  k="${kubectls[$i]}"
  version="$("$k" version --client 2>/dev/null || true)"
  [[ "$version" =~ v[0-9]+\.[0-9]+\.[0-9]+ ]] && version="${BASH_REMATCH[0]}" || version="(unknown version)"
  mkdir -p "$out/$i"
  for target in base overlays/dev overlays/prod; do
    name="$(basename "$target")"
    if ! "$k" kustomize "k8s/$target" > "$out/$i/$name.yaml" 2> "$out/$i/$name.err"; then
      cat "$out/$i/$name.err" >&2
      die "kubectl $version kustomize k8s/$target failed"
    fi
  done
  echo "== rendered base, dev, prod with kubectl $version ($k)"
done

# --- lint ------------------------------------------------------------------
mapfile -t yamls < <(find k8s tests/k8s -maxdepth 3 \( -name node_modules -o -name .cache \) -prune -o \
  \( -name '*.yaml' -o -name '*.yml' \) -print | sort)
yamllint -s -c "$here/yamllint.yaml" "${yamls[@]}" || die "yamllint found problems (above)"
echo "== yamllint: ${#yamls[@]} files clean"

# --- check -----------------------------------------------------------------
extra=()
[ "${#kubectls[@]}" -gt 1 ] && extra+=(--compare "$out/1")
if [ -n "$matchd" ]; then
  { "$matchd" --help 2>&1 || true; } | sed -nE 's/^  --([a-z0-9_]+) \(default: .*/\1/p' | sort -u > "$out/flags"
  [ -s "$out/flags" ] || die "$matchd --help listed no flags"
  extra+=(--flags "$out/flags")
fi
status=0
rm -f "$cache/dashboard-rules.json"   # validate.mjs writes it anew
node "$here/validate.mjs" --repo "$repo" --rendered "$out/0" "${extra[@]}" || status=1

if ! "$promtool" check rules k8s/prometheus-alerts.yaml > "$out/promtool" 2>&1; then
  cat "$out/promtool" >&2; echo "FAIL: promtool check rules k8s/prometheus-alerts.yaml" >&2; status=1
fi
if [ -f "$cache/dashboard-rules.json" ] \
    && ! "$promtool" check rules "$cache/dashboard-rules.json" > "$out/promtool" 2>&1; then
  cat "$out/promtool" >&2; echo "FAIL: a Grafana dashboard query does not parse (promtool, above)" >&2; status=1
fi
if ! "$promtool" test rules tests/k8s/alerts_test.yaml > "$out/promtool" 2>&1; then
  cat "$out/promtool" >&2; echo "FAIL: promtool test rules tests/k8s/alerts_test.yaml" >&2; status=1
fi
[ "$status" -eq 0 ] && echo "== promtool: alert rules and dashboard queries parse, alert tests pass"
exit "$status"
