# Multi-stage image. Build stage: Debian 12 with the project's own dependency script and CMake.
# Runtime stage: only shared libraries (OpenBLAS included), a numeric non-root user.
# Until the server lands (next issue) the image runs the core demo; issue 6 builds and runs
# it for real with buildah and adds the store volume and ports.
FROM debian:bookworm AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN deploy/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DLSTMSERVE_BUILD_TESTS=OFF -DLSTMSERVE_BUILD_BENCHMARKS=OFF \
 && cmake --build /build --parallel

FROM debian:bookworm-slim
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
COPY --from=build /build/core/lstmserve-core-demo /usr/local/bin/lstmserve-core-demo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lstmserve-core-demo"]
