#!/usr/bin/env bash
# Builds the lstmserve image with buildah and runs it for real:
#   1. installs buildah, podman and debootstrap when missing (install-deps.sh image);
#   2. when no debian:bookworm / debian:bookworm-slim image is present (no registry is
#      reachable here), makes a local stand-in for both with debootstrap (about 70 s);
#   3. builds the Dockerfile (multi-stage) and prints the build time and the image size;
#   4. checks the runtime image: non-root numeric user, no compiler, no -dev package, every
#      shared library found;
#   5. starts the server from the image's own ENTRYPOINT (on 127.0.0.1, ephemeral ports,
#      host network) and drives it from outside with the CLI: health, create, run, and a
#      scrape of /metrics.
# Usage: deploy/image-test.sh [IMAGE_NAME]      (default localhost/lstmserve:test)
# Takes about 15 minutes on 2 cores from nothing; not part of CI (README says how to run it).
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-localhost/lstmserve:test}"
work="$(mktemp -d /tmp/lstmserve-image.XXXXXX)"
container=""
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [[ -n "$container" ]] && buildah rm "$container" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
say() { echo "image-test: $*"; }

deploy/install-deps.sh image
cli=build/client/lstmserve-cli
if [[ ! -x "$cli" ]]; then deploy/install-deps.sh && deploy/build.sh; fi

# 2. Base images.
for base in debian:bookworm debian:bookworm-slim; do
  if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    if [[ ! -f "$work/rootfs.tar" ]]; then
      say "no $base image here: making a stand-in with debootstrap (minbase bookworm)"
      start=$(date +%s)
      debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; exit 1; }
      # The sources of the official images: bookworm, its updates and security.
      rm -f "$work/rootfs/etc/apt/sources.list"
      cat >"$work/rootfs/etc/apt/sources.list.d/debian.sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
      rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
      tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
      rm -rf "$work/rootfs"
      say "debootstrap took $(($(date +%s) - start)) s"
    fi
    podman import "$work/rootfs.tar" "$base" >/dev/null
    say "imported the stand-in as $base"
  fi
done

# 3. Build.
say "building $image"
start=$(date +%s)
# pip inside the build trusts what pip here trusts (a proxy's CA, where there is one).
ca_args=()
if [[ -n "${PIP_CERT:-}" && -f "$PIP_CERT" ]]; then
  ca_args=(--volume "$PIP_CERT:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
buildah bud --isolation chroot --network host --layers "${ca_args[@]}" -t "$image" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
build_s=$(($(date +%s) - start))
size=$(buildah images --format '{{.Size}}' "$image" | head -1)
say "built in ${build_s} s; image size ${size}"

# 4. What the runtime image holds.
container=$(buildah from "$image")
run() { buildah run --isolation chroot --network host "$container" -- "$@"; }
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$image")
[[ "$user" == "65532:65532" ]] || { say "FAIL: image user is '$user'"; exit 1; }
[[ "$(run id -u)" == 65532 ]] || { say "FAIL: does not run as uid 65532"; exit 1; }
if run sh -c 'command -v gcc || command -v cc || command -v c++ || command -v cmake' 2>/dev/null; then
  say "FAIL: a compiler is in the runtime image"; exit 1
fi
dev=$(run sh -c "dpkg-query -W -f='\${Package}\n' | grep -- '-dev\$' || true")
[[ -z "$dev" ]] || { say "FAIL: -dev packages in the runtime image: $dev"; exit 1; }
missing=$(run sh -c 'ldd /usr/local/bin/lstmserve /usr/local/bin/lstmserve-cli | grep "not found" || true')
[[ -z "$missing" ]] || { say "FAIL: missing libraries: $missing"; exit 1; }
run sh -c 'ldd /usr/local/bin/lstmserve' | grep -q "libtorch_cpu.so => /usr/local/lib/lstmserve/" \
  || { say "FAIL: the server does not use the image's libtorch_cpu (PyPI's 2.11)"; exit 1; }
say "runtime image: user 65532:65532, no compiler, no -dev package, every library found, PyPI's libtorch_cpu"

# 5. The server from the image's ENTRYPOINT, moved to loopback and ephemeral ports (later
# flags win), driven from outside.
mapfile -t entrypoint < <(buildah inspect --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$image" | sed '/^$/d')
say "entrypoint: ${entrypoint[*]}"
run "${entrypoint[@]}" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --http_listen=127.0.0.1:0 --threads=2 \
  >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 300); do grep -q "^http on" "$work/server.out" 2>/dev/null && break; sleep 0.1; done
target=$(sed -n 's/^listening on //p' "$work/server.out")
metrics=$(sed -n 's/^metrics on //p' "$work/server.out")
[[ -n "$target" && -n "$metrics" ]] || { cat "$work/server.err"; say "FAIL: the server did not start"; exit 1; }
say "server in the image: gRPC $target, metrics $metrics"
[[ "$("$cli" --target="$target" health)" == *SERVING* ]] || { say "FAIL: health"; exit 1; }
"$cli" --target="$target" create --id=image-test --layers=2 --input_size=16 --hidden_size=32 --seed=7 >"$work/create.out"
"$cli" --target="$target" run --id=image-test --batch=2 --steps=5 --input_seed=1 >"$work/run.out"
grep -q "image-test" "$work/create.out" || { cat "$work/create.out"; say "FAIL: create"; exit 1; }
# One set of bits: every initializer's sets, as the quick start's build creates them.
/usr/bin/python3 tests/deploy/same_bits.py --cli "$cli" --server build/server/lstmserve --target "$target" \
  | tee "$work/same_bits.txt"
grep -q ": identical$" "$work/same_bits.txt" || { say "FAIL: the image's sets differ from the quick start's"; exit 1; }
curl -sf "http://$metrics/metrics" >"$work/metrics.txt"
grep -q 'lstmserve_requests_total{code="OK",method="Run"' "$work/metrics.txt" \
  || { say "FAIL: /metrics does not count the Run"; exit 1; }
grep -q 'lstmserve_parameter_sets 44' "$work/metrics.txt" || { say "FAIL: /metrics does not show the set"; exit 1; }
grep -q '^lstmserve_build_info{.*device="cpu".*libtorch_version="2.11.0"' "$work/metrics.txt" \
  || { grep build_info "$work/metrics.txt"; say "FAIL: build info"; exit 1; }
# The Open Inference Protocol's HTTP API: ready, and an inference of the set.
http=$(sed -n 's/^http on //p' "$work/server.out")
curl -sf "http://$http/v2/health/ready" >/dev/null || { say "FAIL: /v2/health/ready"; exit 1; }
curl -sf -X POST "http://$http/v2/models/image-test/infer" -H 'Content-Type: application/json' \
  -d "{\"inputs\":[{\"name\":\"INPUT\",\"datatype\":\"FP32\",\"shape\":[1,1,16],\"data\":[$(seq -s, 16 | sed 's/[0-9]*/0.1/g')]}]}" \
  | grep -q '"name":"OUTPUT"' || { say "FAIL: /v2/models/image-test/infer"; exit 1; }
# The set is in the image's /data (the volume), written by uid 65532.
run sh -c 'ls -ln /data' | grep -q " 65532 65532 .*image-test" || { run ls -ln /data; say "FAIL: store"; exit 1; }
# SIGTERM to the server itself (buildah run does not forward it): the process that
# listens on the gRPC port.
port="${target##*:}"
pid=$(ss -ltnpH "sport = :$port" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
[[ -n "$pid" ]] || { say "FAIL: no process listens on $target"; exit 1; }
kill -TERM "$pid"
wait "$server_pid" || true
server_pid=""
grep -q "stopped" "$work/server.err" || { cat "$work/server.err"; say "FAIL: no clean drain"; exit 1; }
say "health SERVING, create, the same bits as the quick start, run, /metrics, the /v2 HTTP API and a clean drain: all passed"
say "summary: build ${build_s} s, image ${size}"
