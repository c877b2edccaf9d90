# Multi-stage image. Build stage: Debian 12 with the project's own dependency script and CMake.
# Runtime stage: shared libraries only (OpenBLAS included), a numeric non-root user, the store
# as a volume. Not yet built or run here: issue 6 builds it with buildah and drives it for real.
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
COPY --from=build /build/server/lstmserve /build/client/lstmserve-cli /usr/local/bin/
RUN mkdir -p /data && chown 65532:65532 /data
VOLUME /data
EXPOSE 50051
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lstmserve", "--listen=0.0.0.0:50051", "--store_dir=/data"]
