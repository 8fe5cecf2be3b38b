#!/usr/bin/env bash
# Builds gRPC 1.51.1 -- Debian 12's own version, from Debian's source package --
# as a release build (CMake Release: -O3 -DNDEBUG) and installs it into PREFIX.
#
#   scripts/build-release-grpc.sh [PREFIX]     default PREFIX: /opt/matchd-grpc
#
# then build matchd against it:
#
#   cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DMATCHD_GRPC_PREFIX=PREFIX
#
# Why: Debian's libgrpc is built without NDEBUG, so every completion scans all
# outstanding tags of its completion queue (O(open calls) per event); see
# docs/PERFORMANCE.md.
#
# What it installs: static libraries (gpr, grpc, grpc++, grpc++_reflection, upb,
# address_sorting, grpc_plugin_support), headers, grpc_cpp_plugin and the CMake
# package (gRPC::...). Static, so matchd carries its gRPC inside and needs no
# rpath, no LD_LIBRARY_PATH and no libgrpc in the runtime image. protobuf, abseil,
# re2, c-ares, OpenSSL and zlib are Debian's (shared), the same ones Debian's
# gRPC uses.
#
# Idempotent: exits at once if PREFIX holds a complete install whose stamp file
# (PREFIX/.matchd-grpc-stamp) names this version and build. Otherwise it installs
# missing build packages (apt-get update at most once), adds a deb-src entry for
# bookworm if apt has none, fetches the source with `apt-get source`, builds only
# the targets above (~6 min on 2 busy cores) and installs. Run as root (or via
# sudo). Env: JOBS (parallel jobs, default nproc), TMPDIR (work dir parent).
set -euo pipefail

PREFIX="${1:-/opt/matchd-grpc}"
JOBS="${JOBS:-$(nproc)}"
UPSTREAM_VERSION=1.51.1
# First line of the stamp; change it when the build changes so old installs are rebuilt.
STAMP_ID="grpc ${UPSTREAM_VERSION} release static (build-release-grpc.sh v1)"
STAMP="${PREFIX}/.matchd-grpc-stamp"
# What matchd needs from the build; the rest of gRPC's targets are skipped.
TARGETS=(grpc grpc++ grpc++_reflection grpc_cpp_plugin)
# Installed files that must exist for the install to count as complete.
REQUIRED_FILES=(
  lib/cmake/grpc/gRPCConfig.cmake lib/cmake/grpc/gRPCTargets-release.cmake
  lib/libgrpc.a lib/libgrpc++.a lib/libgrpc++_reflection.a lib/libgpr.a
  bin/grpc_cpp_plugin include/grpcpp/grpcpp.h
)
PACKAGES=(
  build-essential cmake ninja-build pkg-config dpkg-dev xz-utils
  libprotobuf-dev libprotoc-dev protobuf-compiler
  libabsl-dev libre2-dev libc-ares-dev libssl-dev zlib1g-dev
)
DEB_SRC_FILE=/etc/apt/sources.list.d/matchd-deb-src.sources

case "${PREFIX}" in
  /*) ;;
  *) echo "PREFIX must be an absolute path, not '${PREFIX}'" >&2; exit 2 ;;
esac

step() { echo "== build-release-grpc: $*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

installed_ok() {
  [ -f "${STAMP}" ] && [ "$(head -n1 "${STAMP}")" = "${STAMP_ID}" ] || return 1
  local f
  for f in "${REQUIRED_FILES[@]}"; do [ -e "${PREFIX}/${f}" ] || return 1; done
}

if installed_ok; then
  step "${PREFIX} already has ${STAMP_ID}; nothing to do"
  exit 0
fi
start=${SECONDS}

# --- 1. apt: build packages and a deb-src entry -----------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# A bookworm deb-src entry, by apt's own reading of the sources (one-line .list
# and deb822 .sources files alike).
if ! apt-get indextargets --no-release-info 'Created-By: Sources' 'Release: bookworm' | grep -q .; then
  # Reuse the site of the configured bookworm archive (a local mirror, if any).
  # shellcheck disable=SC2016  # $(SITE) is apt's format field, not shell
  site="$(apt-get indextargets --no-release-info --format '$(SITE)' \
            'Created-By: Packages' 'Release: bookworm' | head -n1)"
  site="${site:-http://deb.debian.org/debian}"
  step "no deb-src entry in apt's sources: adding ${DEB_SRC_FILE} (${site} bookworm main)"
  as_root tee "${DEB_SRC_FILE}" >/dev/null <<EOF
# Added by matchd's scripts/build-release-grpc.sh for 'apt-get source grpc'.
Types: deb-src
URIs: ${site}
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

# Debian versions of source package grpc with upstream version UPSTREAM_VERSION.
grpc_source_version() {
  apt-cache showsrc grpc 2>/dev/null \
    | awk '/^Package: /{p = ($2 == "grpc")} p && /^Version: /{print $2}' \
    | grep -E "^([0-9]+:)?${UPSTREAM_VERSION//./\\.}-" | sort -V | tail -n1 || true
}

src_version="$(grpc_source_version)"
if [ ${#missing[@]} -gt 0 ] || [ -z "${src_version}" ]; then
  step "apt-get update"
  as_root apt-get update -qq
  src_version="$(grpc_source_version)"
fi
if [ ${#missing[@]} -gt 0 ]; then
  step "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -z "${src_version}" ]; then
  echo "apt knows no source package grpc ${UPSTREAM_VERSION}; check the deb-src entries" >&2
  exit 1
fi

# --- 2. source --------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/matchd-grpc.XXXXXX")"
trap 'echo "build-release-grpc: failed; work dir kept: ${work}" >&2' ERR
# apt downloads as user _apt when it can write here (otherwise it warns).
if id _apt >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then chown _apt "${work}"; fi
step "apt-get source grpc=${src_version} (in ${work})"
(cd "${work}" && apt-get source -qq "grpc=${src_version}" >/dev/null)
src="${work}/grpc-${UPSTREAM_VERSION}"
[ -f "${src}/CMakeLists.txt" ] || { echo "no ${src}/CMakeLists.txt" >&2; exit 1; }

# `cmake --install` installs every library of the export set, so drop the
# install rules of the libraries that are not built: grpc_unsecure alone
# would add ~70% to the build time.
perl -0pi -e '$n += s/^  install\(TARGETS (grpc_unsecure|grpc\+\+_unsecure|grpc\+\+_alts|grpc\+\+_error_details|grpcpp_channelz) EXPORT gRPCTargets\n(?:    .*\n)*?  \)\n/  # matchd: $1 is not built\n/mg;
              END { die "expected 5 install rules to drop, dropped $n\n" unless $n == 5 }' \
  "${src}/CMakeLists.txt"

# --- 3. configure and build -------------------------------------------------
step "configure (Release, static, Debian's protobuf/absl/re2/c-ares/OpenSSL/zlib)"
cmake -S "${src}" -B "${work}/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_STANDARD=17 \
  -DCMAKE_INSTALL_PREFIX="${PREFIX}" \
  -DBUILD_SHARED_LIBS=OFF \
  -DgRPC_BUILD_TESTS=OFF \
  -DgRPC_BUILD_CSHARP_EXT=OFF \
  -DgRPC_BACKWARDS_COMPATIBILITY_MODE=OFF \
  -DgRPC_ABSL_PROVIDER=package \
  -DgRPC_CARES_PROVIDER=package \
  -DgRPC_PROTOBUF_PROVIDER=package \
  -DgRPC_RE2_PROVIDER=package \
  -DgRPC_SSL_PROVIDER=package \
  -DgRPC_ZLIB_PROVIDER=package \
  -DgRPC_BUILD_GRPC_CPP_PLUGIN=ON \
  -DgRPC_BUILD_GRPC_CSHARP_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_NODE_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_OBJECTIVE_C_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_PHP_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_PYTHON_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_RUBY_PLUGIN=OFF \
  >"${work}/configure.log" 2>&1 || { tail -n 30 "${work}/configure.log" >&2; false; }
grep -q '^CMAKE_CXX_FLAGS_RELEASE:STRING=.*-DNDEBUG' "${work}/build/CMakeCache.txt" \
  || { echo "Release flags lack -DNDEBUG" >&2; exit 1; }

step "build ${TARGETS[*]} with ${JOBS} jobs (log: ${work}/build.log)"
build_start=${SECONDS}
cmake --build "${work}/build" -j "${JOBS}" --target "${TARGETS[@]}" >"${work}/build.log" 2>&1 \
  || { tail -n 40 "${work}/build.log" >&2; false; }
step "built in $((SECONDS - build_start)) s"

# --- 4. install: into PREFIX.partial, then moved into place -----------------
partial="${PREFIX}.partial"
as_root rm -rf "${partial}"
step "install into ${PREFIX}"
as_root cmake --install "${work}/build" --prefix "${partial}" >"${work}/install.log"
# pkg-config files of the libraries that were not built.
as_root rm -f "${partial}/lib/pkgconfig/grpc_unsecure.pc" "${partial}/lib/pkgconfig/grpc++_unsecure.pc"
as_root tee "${partial}/.matchd-grpc-stamp" >/dev/null <<EOF
${STAMP_ID}
debian-source grpc ${src_version}
cmake Release (-O3 -DNDEBUG), static; targets: ${TARGETS[*]}
built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start)) s with ${JOBS} jobs
EOF
if [ -e "${PREFIX}" ]; then
  # Only replace what this script made (an older or incomplete install).
  if [ -f "${STAMP}" ] || [ -z "$(ls -A "${PREFIX}")" ]; then
    as_root rm -rf "${PREFIX}"
  else
    echo "${PREFIX} exists and was not made by this script; remove it or pick another" \
         "PREFIX (the new install is in ${partial})" >&2
    exit 1
  fi
fi
as_root mv "${partial}" "${PREFIX}"
installed_ok || { echo "install in ${PREFIX} is incomplete" >&2; exit 1; }

trap - ERR
rm -rf "${work}"
step "done in $((SECONDS - start)) s: gRPC ${src_version} (release, static) in ${PREFIX}"
echo "   build matchd with: cmake ... -DMATCHD_GRPC_PREFIX=${PREFIX}"
