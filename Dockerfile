# lstmserve image, multi-stage.
#   build:   debian:bookworm, the project's dependency script (compile profile) and CMake;
#            the server and the CLI only (no tests, no benchmarks).
#   runtime: debian:bookworm-slim with shared libraries only (no compiler, no -dev package),
#            a numeric non-root user, the store as a volume.
# LibTorch: the CPU libraries of PyPI's torch 2.11.0 wheel, the quick start's LibTorch
# (-DLSTMSERVE_LIBTORCH=pypi-cpu): libtorch_cpu and libc10, with the two small CUDA
# libraries libtorch_cpu names (never called on a CPU). So the image creates the same bits
# as the quick start and as PyTorch 2.11 (README, "LibTorch: the builds").
# Built and run for real by deploy/image-test.sh (buildah). For a GPU image see README,
# "Container image".
FROM debian:bookworm AS build
# Behind a TLS-intercepting proxy: a CA bundle for pip, mounted into the build
# (deploy/image-test.sh passes the host's). Unset elsewhere.
ARG PIP_CERT
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
      -DLSTMSERVE_LIBTORCH=pypi-cpu -DLSTMSERVE_TOOLS=/opt/lstmserve-torch-cpu \
 && cmake --build /build --parallel --target lstmserve lstmserve_cli \
 && strip /build/server/lstmserve /build/client/lstmserve-cli \
 && site=$(/opt/lstmserve-torch-cpu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && mkdir /torch-lib \
 && cp -L "$site"/torch/lib/libtorch_cpu.so "$site"/torch/lib/libc10.so "$site"/torch/lib/libgomp.so.1 \
          "$site"/nvidia/cu13/lib/libcudart.so.13 "$site"/nvidia/cu13/lib/libcupti.so.13 /torch-lib/

FROM debian:bookworm-slim
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
COPY --from=build /build/server/lstmserve /build/client/lstmserve-cli /usr/local/bin/
COPY --from=build /torch-lib/ /usr/local/lib/lstmserve/
RUN echo /usr/local/lib/lstmserve >/etc/ld.so.conf.d/lstmserve.conf && ldconfig
RUN mkdir -p /data && chown 65532:65532 /data
VOLUME /data
# gRPC (lstmserve.v1 and the Open Inference Protocol), Prometheus metrics, the protocol's HTTP API.
EXPOSE 50051 9464 8000
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lstmserve", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--http_listen=0.0.0.0:8000", "--store_dir=/data"]
