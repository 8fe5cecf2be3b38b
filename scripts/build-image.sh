#!/usr/bin/env bash
# Build matchd's container image without a daemon (buildah), then check it.
#
#   scripts/build-image.sh [--grpc debian|release] [--tag NAME:TAG] [--save FILE.tar] [--no-check]
#
#   --grpc     link Debian's gRPC (default), or `release`: gRPC built as a
#              release static library by scripts/build-release-grpc.sh
#   --tag      image name (default matchd:dev, what the dev overlay deploys)
#   --save     also write the image as a docker-archive tarball (for
#              `docker load`, `kind load image-archive`, `skopeo copy`)
#   --no-check build only
#
# Debian 12, as root. Installs buildah and debootstrap when missing. Without a
# local debian:bookworm-slim image it makes one with debootstrap (minbase, the
# same variant the official slim image uses) and imports it, so nothing is
# pulled from a container registry. JOBS (default 2) sets the compile jobs.
#
# The check runs the built image the way Kubernetes runs the Deployment: the
# image's own ENTRYPOINT + CMD, as uid/gid 65532, on a read-only root
# filesystem with the Kubernetes base configuration mounted at /etc/matchd, in
# a private network namespace (so it never collides with a matchd on the
# host's port 50051). It asserts:
#   - image config: User 65532:65532, exec-form Entrypoint [/usr/local/bin/matchd],
#     ports 50051 and 9090 exposed
#   - grpc.health.v1.Health: `liveness` and `matchmaking.v1.Matchmaker` SERVING
#   - the image's matchctl lists the queues; /metrics on 9090 has matchd_ series
#   - on SIGTERM: readiness NOT_SERVING at once while liveness stays SERVING,
#     a held FindMatch call ends with UNAVAILABLE, exit status 0 within 25 s
#   - every log line on stderr is a JSON object
#   - started with the prod overlay's container args instead of CMD: every
#     flag accepted, ready; a second SIGTERM cuts the drain short, exit 0
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"

GRPC=debian
TAG=matchd:dev
SAVE=""
CHECK=1
JOBS="${JOBS:-2}"
BASE=debian:bookworm-slim
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

while [ $# -gt 0 ]; do
  case "$1" in
    --grpc) GRPC="$2"; shift 2 ;;
    --grpc=*) GRPC="${1#*=}"; shift ;;
    --tag) TAG="$2"; shift 2 ;;
    --tag=*) TAG="${1#*=}"; shift ;;
    --save) SAVE="$2"; shift 2 ;;
    --save=*) SAVE="${1#*=}"; shift ;;
    --no-check) CHECK=0; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$GRPC" in debian|release) ;; *) echo "--grpc must be debian or release" >&2; exit 2 ;; esac
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (buildah's chroot isolation and the check's namespaces need it)" >&2
  exit 2
fi

START=$SECONDS
step() { printf '== [%4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
need=()
for p in buildah debootstrap jq iproute2 util-linux python3-grpcio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# --- base image --------------------------------------------------------------
if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  step "base image $BASE: present"
else
  step "base image $BASE: making it with debootstrap --variant=minbase bookworm"
  work="$(mktemp -d /var/tmp/matchd-base.XXXXXX)"
  rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap (log: $work/debootstrap.log)"; }
  # As the official slim image: sources with updates and security, no
  # documentation, man pages or translations installed by later packages.
  rm -f "$rootfs/etc/apt/sources.list"
  cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  chroot "$rootfs" apt-get clean
  # What the exclusions above keep out of later packages, out of these too.
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
    "$rootfs"/usr/share/lintian/*
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
    "$rootfs/etc/hostname"
  : > "$rootfs/etc/resolv.conf"
  tar -C "$rootfs" --numeric-owner -cf "$work/rootfs.tar" .
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["bash"]' "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
  rm -rf "$work"
  step "base image $BASE: imported"
fi

# --- build ---------------------------------------------------------------------
step "building $TAG (GRPC=$GRPC, JOBS=$JOBS)"
build_log="$(mktemp /tmp/matchd-image-build.XXXXXX.log)"
if ! buildah bud --isolation chroot --pull=never --layers \
    --build-arg "GRPC=$GRPC" --build-arg "JOBS=$JOBS" \
    -f Dockerfile -t "$TAG" . > "$build_log" 2>&1; then
  tail -n 40 "$build_log" >&2
  fail "buildah bud (full log: $build_log)"
fi
grep -E '^runtime packages:|^bundled libraries:' "$build_log" || true
rm -f "$build_log"
size="$(buildah images --format '{{.Size}}' "$TAG" | head -n1)"
step "built $TAG ($size)"

if [ -n "$SAVE" ]; then
  rm -f "$SAVE"
  buildah push --quiet "$TAG" "docker-archive:$SAVE:$TAG"
  step "saved $TAG to $SAVE"
fi

[ "$CHECK" -eq 1 ] || { step "done (not checked)"; exit 0; }

# --- check: image config -----------------------------------------------------------
step "checking the image configuration"
cfg="$(buildah inspect --type image "$TAG" | jq '.OCIv1.config')"
[ "$(jq -r '.User' <<<"$cfg")" = "65532:65532" ] || fail "User is $(jq -r '.User' <<<"$cfg"), not 65532:65532"
[ "$(jq -c '.Entrypoint' <<<"$cfg")" = '["/usr/local/bin/matchd"]' ] \
  || fail "Entrypoint is $(jq -c '.Entrypoint' <<<"$cfg"), not the exec form [\"/usr/local/bin/matchd\"]"
jq -e '.ExposedPorts | has("50051/tcp") and has("9090/tcp")' <<<"$cfg" >/dev/null \
  || fail "ports 50051 and 9090 are not both exposed"
echo "   user 65532:65532, entrypoint $(jq -c .Entrypoint <<<"$cfg"), cmd $(jq -c .Cmd <<<"$cfg")"

# --- check: run it -----------------------------------------------------------------
ctr="$(buildah from --pull=never --quiet "$TAG")"
mnt="$(buildah mount "$ctr")"
tmp="$(mktemp -d /tmp/matchd-image-check.XXXXXX)"
cleanup() { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT

jq -r '.Entrypoint[], (.Cmd // [])[]' <<<"$cfg" > "$tmp/argv"
# The prod overlay's container args (the patch carries the whole list).
{ jq -r '.Entrypoint[]' <<<"$cfg"
  sed -nE 's/^ *- (--[a-z0-9_]+=.*)$/\1/p' k8s/overlays/prod/deployment-patch.yaml; } > "$tmp/argv.prod"
jq -r '(.Env // [])[]' <<<"$cfg" > "$tmp/env"
mkdir -p "$tmp/config" "$tmp/root"
cp k8s/base/config.json "$tmp/config/config.json"

# grpc.health.v1.Health/Check without generated stubs: the request is field 1
# (service name), the reply field 1 (status enum).
cat > "$tmp/health.py" <<'EOF'
import sys, grpc
addr, service = sys.argv[1], sys.argv[2]
names = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
name = service.encode()
req = b"\x0a" + bytes([len(name)]) + name if name else b""
with grpc.insecure_channel(addr) as ch:
    check = ch.unary_unary("/grpc.health.v1.Health/Check",
                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        reply = check(req, timeout=2)
    except grpc.RpcError as e:
        print(e.code().name); sys.exit(0)
    print(names.get(reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0, "UNKNOWN"))
EOF
cat > "$tmp/metrics.py" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=3).read().decode()
names = sorted({l.split("{")[0].split(" ")[0] for l in body.splitlines() if l.startswith("matchd_")})
print(" ".join(names))
EOF
cat > "$tmp/logs.py" <<'EOF'
import json, sys
bad = []
for line in open(sys.argv[1]):
    try:
        ok = isinstance(json.loads(line), dict)
    except ValueError:
        ok = False
    if not ok and line.strip():
        bad.append(line.rstrip())
for line in bad[:3]:
    print("   not JSON:", line)
sys.exit(1 if bad else 0)
EOF

# Runs inside `unshare --net --mount --pid --fork --mount-proc`: a loopback-only
# network and a private mount table, gone when it exits.
cat > "$tmp/run.sh" <<'EOF'
set -euo pipefail
mnt="$1"; tmp="$2"; py=/usr/bin/python3
root="$tmp/root"
ip link set lo up
# The image's root filesystem, read-only (readOnlyRootFilesystem: true), with
# /proc, a minimal /dev and the configuration mounted as a runtime would.
mount --bind "$mnt" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for d in null zero full random urandom; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
mount --bind "$tmp/config" "$root/etc/matchd"
mount -o remount,bind,ro "$root/etc/matchd"

mapfile -t argv < "$tmp/argv"
mapfile -t envv < "$tmp/env"
# exec: in `as_app ... &` the background job's pid is then the program's own.
as_app() { exec env -i "${envv[@]}" chroot --userspec=65532:65532 "$root" "$@"; }
health() { "$py" "$tmp/health.py" 127.0.0.1:50051 "$1"; }
fail() { echo "FAIL: $*" >&2; echo "--- matchd stderr:" >&2; cat "$tmp/matchd.log" >&2 || true; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

t0=$(date +%s.%N)
(as_app "${argv[@]}") 2> "$tmp/matchd.log" &
pid=$!
for _ in $(seq 100); do
  [ "$(health matchmaking.v1.Matchmaker)" = SERVING ] && break
  kill -0 "$pid" 2>/dev/null || { wait "$pid" && rc=0 || rc=$?; fail "matchd exited with status $rc at start"; }
  sleep 0.1
done
[ "$(health matchmaking.v1.Matchmaker)" = SERVING ] || fail "readiness (matchmaking.v1.Matchmaker) is not SERVING after 10 s"
echo "   ready in $(since "$t0") s: readiness SERVING"
[ "$(health liveness)" = SERVING ] || fail "liveness is $(health liveness), not SERVING"
echo "   liveness SERVING"
echo "   idle memory: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status) RSS, $(ls /proc/$pid/task | wc -l) threads"

queues="$(as_app /usr/local/bin/matchctl --server 127.0.0.1:50051 queues)" || fail "matchctl queues failed"
grep -q duel <<<"$queues" || fail "matchctl queues does not list the queue duel: $queues"
echo "   matchctl queues: $(grep -c . <<<"$queues") lines, duel listed"

series="$("$py" "$tmp/metrics.py")" || fail "GET :9090/metrics failed"
for s in matchd_tickets_waiting matchd_rpcs_total; do
  grep -qw "$s" <<<"$series" || fail "/metrics lacks $s (has: $series)"
done
echo "   /metrics: $(wc -w <<<"$series") matchd_ series"

# A held FindMatch call, then SIGTERM.
(as_app /usr/local/bin/matchctl --server 127.0.0.1:50051 --json find --queue duel \
  --player image-check:1500) > "$tmp/find.out" 2> "$tmp/find.err" &
find_pid=$!
for _ in $(seq 50); do grep -q queued "$tmp/find.out" 2>/dev/null && break; sleep 0.1; done
grep -q queued "$tmp/find.out" || fail "FindMatch got no queued event: $(cat "$tmp/find.out" "$tmp/find.err")"

t0=$(date +%s.%N)
kill -TERM "$pid"
sleep 1
r="$(health matchmaking.v1.Matchmaker)"; l="$(health liveness)"
[ "$r" = NOT_SERVING ] || fail "1 s after SIGTERM readiness is $r, not NOT_SERVING"
[ "$l" = SERVING ] || fail "1 s after SIGTERM liveness is $l, not SERVING"
echo "   SIGTERM: readiness NOT_SERVING, liveness SERVING"
find_rc=0; wait "$find_pid" || find_rc=$?
[ "$find_rc" -eq 1 ] && grep -q UNAVAILABLE "$tmp/find.out" "$tmp/find.err" \
  || fail "the held FindMatch did not end with UNAVAILABLE (exit $find_rc): $(cat "$tmp/find.out" "$tmp/find.err")"
echo "   held FindMatch ended UNAVAILABLE $(since "$t0") s after SIGTERM"
rc=0
for _ in $(seq 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fail "matchd still running 25 s after SIGTERM"; fi
wait "$pid" || rc=$?
elapsed="$(since "$t0")"
[ "$rc" -eq 0 ] || fail "matchd exited with status $rc after SIGTERM"
echo "   exit 0, $elapsed s after SIGTERM (terminationGracePeriodSeconds is 30)"
"$py" "$tmp/logs.py" "$tmp/matchd.log" || fail "stderr has lines that are not JSON objects"
echo "   $(grep -c . "$tmp/matchd.log") log lines, all JSON"

# The prod overlay's flags: accepted by this binary, serving, and a second
# SIGTERM cuts the drain short.
mapfile -t argv < "$tmp/argv.prod"
(as_app "${argv[@]}") 2> "$tmp/matchd.log" &
pid=$!
for _ in $(seq 100); do
  [ "$(health matchmaking.v1.Matchmaker)" = SERVING ] && break
  kill -0 "$pid" 2>/dev/null || { wait "$pid" && rc=0 || rc=$?; fail "with the prod overlay's args matchd exited with status $rc at start"; }
  sleep 0.1
done
[ "$(health matchmaking.v1.Matchmaker)" = SERVING ] || fail "with the prod overlay's args readiness is not SERVING after 10 s"
echo "   prod overlay args (${#argv[@]} words): ready, $(ls /proc/$pid/task | wc -l) threads"
t0=$(date +%s.%N)
kill -TERM "$pid"; sleep 0.5; kill -TERM "$pid"
rc=0
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fail "a second SIGTERM did not stop matchd within 10 s"; fi
wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || fail "matchd exited with status $rc after two SIGTERMs"
echo "   two SIGTERMs: exit 0 after $(since "$t0") s"
EOF
step "running $TAG: read-only root, uid 65532, private network"
unshare --net --mount --pid --fork --mount-proc bash "$tmp/run.sh" "$mnt" "$tmp" \
  || fail "the image check failed"
step "image $TAG built and checked"
