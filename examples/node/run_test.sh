#!/usr/bin/env bash
# Runs the Node example's tests against a real matchd (CTest: example_node_client).
#
#   examples/node/run_test.sh --matchd PATH/TO/matchd --proto_dir PATH/TO/proto
#
# Installs the locked dependencies (npm ci, from package-lock.json) into
# examples/node/node_modules when they are missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
matchd="" proto_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --matchd) matchd="$2"; shift 2 ;;
    --proto_dir) proto_dir="$2"; shift 2 ;;
    *) echo "run_test.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$matchd" || -z "$proto_dir" ]]; then
  echo "usage: run_test.sh --matchd PATH/TO/matchd --proto_dir PATH/TO/proto" >&2
  exit 2
fi

# Resolved before the cd below: relative paths are the caller's.
if [[ ! -x "$matchd" ]]; then echo "run_test.sh: no matchd binary at $matchd" >&2; exit 2; fi
if [[ ! -d "$proto_dir" ]]; then echo "run_test.sh: no proto directory at $proto_dir" >&2; exit 2; fi
matchd="$(realpath "$matchd")"
proto_dir="$(realpath "$proto_dir")"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "run_test.sh: '$tool' not found; install Node.js 18 or later with npm" \
         "(Debian 12: apt-get install nodejs npm)" >&2
    exit 1
  fi
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if (( major < 18 )); then
  echo "run_test.sh: Node.js $(node --version) is too old; 18 or later is needed" >&2
  exit 1
fi

cd "$here"
if [[ ! -d node_modules ]]; then
  npm ci --no-audit --no-fund
fi
MATCHD="$matchd" PROTO_DIR="$proto_dir" exec node --test find_match.test.js
