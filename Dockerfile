# syntax=docker/dockerfile:1
#
# matchd's container image: a builder stage with the toolchain, and a runtime
# stage of debian:bookworm-slim with only the shared libraries matchd links,
# running as uid/gid 65532.
#
#   scripts/build-image.sh                  buildah, no daemon; builds and checks the image
#   docker build -t matchd:dev .            where a Docker engine is at hand
#   docker build --build-arg GRPC=release -t matchd:dev .
#
# Build arguments:
#   GRPC=debian   link Debian 12's gRPC 1.51 packages (default)
#   GRPC=release  first build gRPC 1.51.1 from Debian's source package as a
#                 release (NDEBUG) static library (scripts/build-release-grpc.sh)
#                 and link that: faster with many open calls
#   JOBS=2        parallel compile jobs
#
# The image runs `matchd` directly (exec-form ENTRYPOINT, no shell), so SIGTERM
# reaches matchd and starts its drain. Default arguments (CMD): gRPC on
# 0.0.0.0:50051, Prometheus metrics on 0.0.0.0:9090, the queue configuration
# at /etc/matchd/config.json (a copy of config/default.json; mount your own
# over /etc/matchd).

ARG BASE_IMAGE=debian:bookworm-slim

########################################################################
FROM ${BASE_IMAGE} AS builder

ARG GRPC=debian
ARG JOBS=2
ARG DEBIAN_FRONTEND=noninteractive
WORKDIR /src

# The toolchain and libraries, from scripts/dev alone: this layer is reused
# until scripts/dev changes.
COPY scripts/dev scripts/dev
RUN scripts/dev deps \
 && apt-get install -y -qq --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
# GRPC=release: gRPC from Debian's source package, built as a release (NDEBUG)
# static library into /opt/grpc (~8 min on 2 busy cores; reused until the
# script changes).
COPY scripts/build-release-grpc.sh scripts/build-release-grpc.sh
RUN case "${GRPC}" in \
      debian) ;; \
      release) scripts/build-release-grpc.sh /opt/grpc ;; \
      *) echo "GRPC must be 'debian' or 'release', not '${GRPC}'" >&2; exit 1 ;; \
    esac

COPY . .
RUN set -eu; \
    prefix=""; \
    if [ "${GRPC}" = release ]; then prefix="-DMATCHD_GRPC_PREFIX=/opt/grpc"; fi; \
    cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
          -DMATCHD_BUILD_TESTS=OFF -DMATCHD_BUILD_BENCH=OFF ${prefix}; \
    cmake --build /build -j "${JOBS}" --target matchd matchctl

# What the runtime stage needs: the stripped binaries, the Debian packages
# that own the shared libraries they link (runtime-packages), and copies of
# linked libraries no package owns (a gRPC built from source).
RUN set -eu; \
    mkdir -p /out/bin /out/lib; \
    install -m 0755 -s /build/service/matchd /build/service/matchctl /out/bin/; \
    ldd /out/bin/matchd /out/bin/matchctl > /tmp/ldd; \
    if grep 'not found' /tmp/ldd; then exit 1; fi; \
    awk '$2 == "=>" && $3 ~ /^\// { print $3 }' /tmp/ldd | sort -u > /tmp/libs; \
    : > /tmp/packages; \
    while read -r lib; do \
      pkg="$( { dpkg -S "${lib}" || dpkg -S "/usr${lib}" || dpkg -S "$(readlink -f "${lib}")" || true; } 2>/dev/null \
              | head -n1 | cut -d: -f1)"; \
      if [ -n "${pkg}" ]; then echo "${pkg}" >> /tmp/packages; else cp -L "${lib}" /out/lib/; fi; \
    done < /tmp/libs; \
    sort -u /tmp/packages > /out/runtime-packages; \
    echo "runtime packages: $(tr '\n' ' ' < /out/runtime-packages)"; \
    echo "bundled libraries: $(ls /out/lib | tr '\n' ' ')"

########################################################################
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive

LABEL org.opencontainers.image.title="matchd" \
      org.opencontainers.image.description="Streaming matchmaking gRPC server" \
      org.opencontainers.image.licenses="NOASSERTION"

COPY --from=builder /out/runtime-packages /tmp/runtime-packages
RUN apt-get update -qq \
 && xargs -a /tmp/runtime-packages apt-get install -y -qq --no-install-recommends \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/runtime-packages
COPY --from=builder /out/lib/ /usr/local/lib/
COPY --from=builder /out/bin/ /usr/local/bin/
COPY config/default.json /etc/matchd/config.json
# Every library resolves, the binary runs (its version and gRPC in the build
# log) and the shipped queue file loads.
RUN ldconfig && /usr/local/bin/matchd --version \
 && /usr/local/bin/matchd --check_config --config /etc/matchd/config.json

# Non-root, numeric (Kubernetes' runAsNonRoot can only verify a numeric user).
USER 65532:65532
WORKDIR /
# 50051 gRPC (matchmaking.v1.Matchmaker, grpc.health.v1.Health), 9090 /metrics.
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/matchd"]
CMD ["--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9090", "--config=/etc/matchd/config.json"]
