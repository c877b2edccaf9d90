# lstmserve image, multi-stage.
#   build:   debian:bookworm, the project's dependency script (compile profile) and CMake;
#            the server and the CLI only (no tests, no benchmarks).
#   runtime: debian:bookworm-slim with shared libraries only (OpenBLAS included, no compiler,
#            no -dev package), a numeric non-root user, the store as a volume.
# LibTorch: Debian's 1.13 (CMake's default, -DLSTMSERVE_LIBTORCH=debian), for a CPU image a
# quarter the size of one on PyPI's CUDA wheel (README, "LibTorch: two builds").
# Built and run for real by deploy/image-test.sh (buildah). For a GPU image see README,
# "Container image".
FROM debian:bookworm AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN deploy/install-deps.sh compile && rm -rf /var/lib/apt/lists/*
COPY CMakeLists.txt ./
COPY core core
COPY proto proto
COPY server server
COPY client client
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DLSTMSERVE_BUILD_TESTS=OFF -DLSTMSERVE_BUILD_BENCHMARKS=OFF \
 && cmake --build /build --parallel --target lstmserve lstmserve_cli \
 && strip /build/server/lstmserve /build/client/lstmserve-cli

FROM debian:bookworm-slim
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
COPY --from=build /build/server/lstmserve /build/client/lstmserve-cli /usr/local/bin/
RUN mkdir -p /data && chown 65532:65532 /data
VOLUME /data
# gRPC (lstmserve.v1 and the Open Inference Protocol), Prometheus metrics, the protocol's HTTP API.
EXPOSE 50051 9464 8000
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lstmserve", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--http_listen=0.0.0.0:8000", "--store_dir=/data"]
