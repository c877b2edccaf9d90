// lstmserve: the server binary. Parses the flags into ServerOptions, starts the Server
// (lstmserve.v1 and the Open Inference Protocol over gRPC, the protocol's HTTP/REST API, the
// Prometheus metrics), and drains on SIGTERM/SIGINT. See --help.
#include <malloc.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "lstmserve/core/blas.h"
#include "lstmserve/core/command_line.h"
#include "lstmserve/core/isa.h"
#include "lstmserve/core/status.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/server.h"

namespace {
const lstmserve::server::ServerOptions kDefaults;
}

ABSL_FLAG(std::string, listen, kDefaults.listen, "HOST:PORT to serve gRPC on; port 0 picks a free port");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen,
          "HOST:PORT to serve Prometheus metrics on (HTTP GET /metrics); port 0 picks a free port; empty: none");
ABSL_FLAG(std::string, http_listen, kDefaults.http_listen,
          "HOST:PORT to serve the Open Inference Protocol's HTTP/REST API on (/v2/...); port 0 picks a free "
          "port; empty: none");
ABSL_FLAG(int, http_threads, kDefaults.http_threads,
          "HTTP workers that decode inference requests (connections are served by an event loop; any number "
          "may be open)");
ABSL_FLAG(absl::Duration, http_idle_timeout, kDefaults.http_idle_timeout,
          "a kept-alive HTTP connection with no request this long is closed");
ABSL_FLAG(int, http_max_connections, kDefaults.http_max_connections,
          "HTTP connections open at once; past it a new one is answered 503 and closed");
ABSL_FLAG(absl::Duration, http_header_timeout, kDefaults.http_header_timeout,
          "an HTTP request's line and headers must arrive within this time of its first byte (else 408)");
ABSL_FLAG(std::string, store_dir, kDefaults.store_dir, "folder of the parameter store (created if missing)");
ABSL_FLAG(std::string, model_dir, kDefaults.model_dir,
          "serve this folder's <id>.safetensors files (with <id>.json LSTM specs and SHA256SUMS) read only, instead "
          "of --store_dir: a KServe runtime's /mnt/models; the server does not start when a file does not check out");
ABSL_FLAG(std::string, device, kDefaults.device, "auto | cpu | cuda | cuda:N");
ABSL_FLAG(int, threads, kDefaults.intra_op_threads, "intra-op threads for inference; 0 = all available cores");
ABSL_FLAG(bool, enable_batching, kDefaults.enable_batching,
          "merge concurrent Step/Run/Session requests on the same set into one core call");
ABSL_FLAG(int, num_batch_threads, kDefaults.num_batch_threads,
          "threads that compute batches; 0: 1 on the CPU (batch threads x --threads should not "
          "exceed the cores), 2 on a GPU (each with its own CUDA stream)");
ABSL_FLAG(int64_t, max_batch_size, kDefaults.max_batch_size, "most rows (sum of B) in one batch");
ABSL_FLAG(int64_t, batch_timeout_micros, kDefaults.batch_timeout_micros,
          "under load, most a batch waits for more requests (also at most half the previous batch's compute "
          "time, and it stops when they stop coming); 0 never waits");
ABSL_FLAG(int64_t, inline_max_work, kDefaults.inline_max_work,
          "a request on a CPU set of at most this many multiply-adds (batch x steps x weights) that finds "
          "the server idle is computed at once on the gRPC thread that received it, saving the batch "
          "thread's wake-up (~30 us); 0: every request goes through the batch queue");
ABSL_FLAG(std::string, lstm_path, kDefaults.lstm_path,
          "the core path of every inference call: auto (picked per call by batch size, steps, dtype and "
          "storage; the batches' kernels are counted in lstmserve_batch_kernel_total) or small_batch, blas, "
          "onednn, generic, cuda_fused, cuda_gemm to force one (a set it cannot serve answers "
          "FAILED_PRECONDITION; on int8/bf16 sets, small_batch computes on float32 activations)");
ABSL_FLAG(int64_t, max_queued_requests, kDefaults.max_queued_requests,
          "queued inference requests beyond which new ones get RESOURCE_EXHAUSTED at once");
ABSL_FLAG(int64_t, max_sequences, kDefaults.max_sequences,
          "most sequences open at once: v1 Session streams on this server, and stored sequences (Open "
          "Inference Protocol) in the sequence store (with a shared store: across all replicas)");
ABSL_FLAG(absl::Duration, sequence_idle_timeout, kDefaults.sequence_idle_timeout,
          "a sequence not stepped for this long is ended: a Session stream cancelled, a stored sequence "
          "expired (e.g. 5m)");
ABSL_FLAG(int64_t, max_sessions, kDefaults.max_sequences, "the old name of --max_sequences");
ABSL_FLAG(absl::Duration, session_idle_timeout, kDefaults.sequence_idle_timeout,
          "the old name of --sequence_idle_timeout");
ABSL_FLAG(std::string, sequence_store, kDefaults.sequence_store,
          "where stored sequences live: memory (this process; a sequence stays on the replica that "
          "started it) or redis://HOST:PORT[/DB] (a Redis 7 or Valkey that every replica shares: any "
          "replica continues any sequence, and sequences survive a replica's death); rediss:// for "
          "Redis over TLS");
ABSL_FLAG(std::string, sequence_store_ca_file, "",
          "rediss:// only: a PEM file of the CA that signed the Redis server's certificate (default: the "
          "system's CAs); the certificate must name the store's host");
ABSL_FLAG(std::string, sequence_store_cert_file, "",
          "rediss:// only: a PEM client certificate to present (Redis asks for one unless tls-auth-clients "
          "is no); with --sequence_store_key_file");
ABSL_FLAG(std::string, sequence_store_key_file, "", "rediss:// only: the PEM key of --sequence_store_cert_file");
ABSL_FLAG(std::string, sequence_store_password_file, kDefaults.sequence_store_password_file,
          "a file holding the Redis password (its first line), when the store needs one");
ABSL_FLAG(absl::Duration, sequence_store_timeout, kDefaults.sequence_store_timeout,
          "the longest one sequence-store operation (or connection) may take before the request gets "
          "UNAVAILABLE");
ABSL_FLAG(int64_t, max_message_bytes, kDefaults.max_message_bytes, "largest gRPC message, in bytes");
ABSL_FLAG(int64_t, max_tensor_elements, kDefaults.max_tensor_elements, "largest tensor in a request, in elements");
ABSL_FLAG(int64_t, max_set_bytes, kDefaults.max_set_bytes, "largest parameter set, in bytes");
ABSL_FLAG(int64_t, max_total_set_bytes, kDefaults.max_total_set_bytes,
          "all parameter sets held in memory together, in bytes: their tensors and the layouts the kernels "
          "derive from them (past it the least recently used sets leave memory)");
ABSL_FLAG(int64_t, max_tensors_per_set, kDefaults.max_tensors_per_set, "most tensors in one parameter set");
ABSL_FLAG(absl::Duration, drain_timeout, kDefaults.drain_timeout,
          "on SIGTERM/SIGINT, how long calls in flight may take to finish (e.g. 10s)");
ABSL_FLAG(std::string, blas_coretype, "auto",
          "OpenBLAS kernels (Debian build): auto (when OpenBLAS fell back to kernels narrower than the CPU's "
          "AVX2/AVX-512 and OPENBLAS_CORETYPE is unset, use Haswell or SkylakeX), keep, or a core name "
          "(Haswell, SkylakeX, Zen, Sandybridge, Cooperlake, ...)");
ABSL_FLAG(std::string, isa, "native",
          "the highest x86-64 level the CPU kernels may use: native (the CPU's, or LSTMSERVE_ISA's), avx512, "
          "avx2_vnni (avx2 with AVX-VNNI for int8, where the CPU has it), avx2 or baseline; caps "
          "MKL, oneDNN and OpenBLAS too (LSTMSERVE_ISA; to run and measure a lower level's kernels)");
ABSL_FLAG(bool, reflection, kDefaults.reflection, "serve gRPC server reflection");
ABSL_FLAG(std::string, tls_cert_file, "", "TLS: the server's certificate chain (PEM); with --tls_key_file");
ABSL_FLAG(std::string, tls_key_file, "", "TLS: the server's private key (PEM)");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "mutual TLS: clients must present a certificate signed by this CA (PEM)");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens, one per line (16+ characters): every call except health must send "
          "'authorization: Bearer TOKEN'");

int main(int argc, char** argv) {
  // Buffers of 4 MiB and more (request bodies, large tensors) get pages of their own, given
  // back to the system when freed. glibc's default raises this threshold up to 32 MiB as
  // buffers are freed and then serves them from its per-thread heaps, which keep the pages:
  // twelve refused 32 MiB HTTP bodies left the server 173 MB larger; with this, under 25 MB.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  // By default libgomp's threads spin for a long time after each parallel region and, on a
  // small machine, take the cores that gRPC and the batcher need; sleeping at once instead
  // (PASSIVE) makes every GEMM of a Run pay a wake-up. A short spin serves both. Measured on
  // 2 cores, S steps at concurrency 64 / M Run at concurrency 1:
  //   default 18.6k req/s p99 14.6 ms / 15.5 runs/s;  PASSIVE 24.3k p99 5.3 ms / 10.8 runs/s;
  //   GOMP_SPINCOUNT=3000  27.4k p99 4.0 ms / 16.0 runs/s.
  // libgomp reads these when it loads, before main: when the user has set neither, set the
  // short spin and restart once (below, with OpenBLAS's kernels).
  lstmserve::core::ParseCommandLineOrExit(
      argc, argv,
      "lstmserve: creates seeded, PyTorch-exact parameter sets and runs stacked-LSTM inference over gRPC.\n"
      "Usage: lstmserve [--listen=0.0.0.0:50051] [--store_dir=./lstmserve-data] [--device=auto] ...\n"
      "Serves lstmserve.v1 and the Open Inference Protocol (inference.GRPCInferenceService) on --listen,\n"
      "the protocol's HTTP/REST API on --http_listen and Prometheus metrics on --metrics_listen.\n"
      "Prints 'listening on HOST:PORT' once it serves gRPC, then 'metrics on HOST:PORT' and\n"
      "'http on HOST:PORT' (each unless disabled);\n"
      "SIGTERM or SIGINT drains and exits 0.",
      {"server/src/main.cc"}, 0);
  lstmserve::server::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.http_listen = absl::GetFlag(FLAGS_http_listen);
  options.http_threads = absl::GetFlag(FLAGS_http_threads);
  options.http_idle_timeout = absl::GetFlag(FLAGS_http_idle_timeout);
  options.http_header_timeout = absl::GetFlag(FLAGS_http_header_timeout);
  options.http_max_connections = absl::GetFlag(FLAGS_http_max_connections);
  options.store_dir = absl::GetFlag(FLAGS_store_dir);
  options.model_dir = absl::GetFlag(FLAGS_model_dir);
  options.device = absl::GetFlag(FLAGS_device);
  options.intra_op_threads = absl::GetFlag(FLAGS_threads);
  options.enable_batching = absl::GetFlag(FLAGS_enable_batching);
  options.num_batch_threads = absl::GetFlag(FLAGS_num_batch_threads);
  options.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  options.batch_timeout_micros = absl::GetFlag(FLAGS_batch_timeout_micros);
  options.inline_max_work = absl::GetFlag(FLAGS_inline_max_work);
  options.lstm_path = absl::GetFlag(FLAGS_lstm_path);
  options.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  options.max_sequences = absl::GetFlag(FLAGS_max_sequences);
  options.sequence_idle_timeout = absl::GetFlag(FLAGS_sequence_idle_timeout);
  // The old names, when given (and the new ones are not).
  if (absl::GetFlag(FLAGS_max_sessions) != kDefaults.max_sequences &&
      options.max_sequences == kDefaults.max_sequences) {
    options.max_sequences = absl::GetFlag(FLAGS_max_sessions);
  }
  if (absl::GetFlag(FLAGS_session_idle_timeout) != kDefaults.sequence_idle_timeout &&
      options.sequence_idle_timeout == kDefaults.sequence_idle_timeout) {
    options.sequence_idle_timeout = absl::GetFlag(FLAGS_session_idle_timeout);
  }
  options.sequence_store = absl::GetFlag(FLAGS_sequence_store);
  options.sequence_store_password_file = absl::GetFlag(FLAGS_sequence_store_password_file);
  options.sequence_store_ca_file = absl::GetFlag(FLAGS_sequence_store_ca_file);
  options.sequence_store_cert_file = absl::GetFlag(FLAGS_sequence_store_cert_file);
  options.sequence_store_key_file = absl::GetFlag(FLAGS_sequence_store_key_file);
  options.sequence_store_timeout = absl::GetFlag(FLAGS_sequence_store_timeout);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_tensor_elements = absl::GetFlag(FLAGS_max_tensor_elements);
  options.max_set_bytes = absl::GetFlag(FLAGS_max_set_bytes);
  options.max_total_set_bytes = absl::GetFlag(FLAGS_max_total_set_bytes);
  options.max_tensors_per_set = absl::GetFlag(FLAGS_max_tensors_per_set);
  options.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  options.reflection = absl::GetFlag(FLAGS_reflection);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  if (absl::Status valid = options.Validate(); !valid.ok()) {
    lstmserve::core::UsageErrorExit(valid.message());
  }
  // What libraries read when they load: set, then restart once, before any thread starts.
  bool restart = false;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr) {
    setenv("GOMP_SPINCOUNT", "3000", 1);
    restart = true;
  }
  auto isa_restart = lstmserve::core::PrepareIsaEnvironment(absl::GetFlag(FLAGS_isa));
  if (!isa_restart.ok()) lstmserve::core::UsageErrorExit(absl::StrCat("--isa: ", isa_restart.status().message()));
  restart = restart || *isa_restart;
  auto blas = lstmserve::core::PrepareBlasEnvironment(absl::GetFlag(FLAGS_blas_coretype));
  if (!blas.ok()) lstmserve::core::UsageErrorExit(blas.status().message());
  if (restart || blas->restart) {
    // By the binary's own path, so that ps and top name the restarted process "lstmserve"
    // (the kernel takes its name from the path executed; "/proc/self/exe" shows as "exe").
    // /proc/self/exe itself when the path is gone (the binary replaced while running).
    std::error_code error;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
    const bool usable = !error && access(self.c_str(), X_OK) == 0;
    execv(usable ? self.c_str() : "/proc/self/exe", argv);  // returns only when it failed: carry on as we are
    if (blas->restart) {
      lstmserve::core::AbandonBlasRestart();
      blas->log_line += " (the restart that would apply it failed: OpenBLAS keeps its choice)";
    }
  }

  // SIGTERM and SIGINT are taken by sigwait below, in this thread only: block them before
  // any other thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  lstmserve::server::LogInfo(blas->log_line);
  auto server = lstmserve::server::Server::Start(options);
  if (!server.ok()) {
    // A flag's value that is wrong in itself (a file it names is unreadable or not what it
    // should be) is a usage error, exit 2 like a malformed flag; a failure of the
    // environment (address in use, store folder not writable, no such device) exits 1.
    if (absl::IsInvalidArgument(server.status())) lstmserve::core::UsageErrorExit(server.status().message());
    lstmserve::server::LogError(absl::StrCat("cannot start: ", lstmserve::core::MessageForLog(server.status())));
    return 1;
  }
  std::printf("listening on %s\n", (*server)->address().c_str());
  if (!(*server)->metrics_address().empty()) std::printf("metrics on %s\n", (*server)->metrics_address().c_str());
  if (!(*server)->http_address().empty()) std::printf("http on %s\n", (*server)->http_address().c_str());
  std::fflush(stdout);
  lstmserve::server::LogInfo(absl::StrCat("listening on ", (*server)->address()));
  if (!(*server)->metrics_address().empty()) {
    lstmserve::server::LogInfo(absl::StrCat("metrics on http://", (*server)->metrics_address(), "/metrics"));
  }
  if (!(*server)->http_address().empty()) {
    lstmserve::server::LogInfo(absl::StrCat("http on ", (*server)->http_address(), " (Open Inference Protocol, /v2)"));
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  lstmserve::server::LogInfo(absl::StrCat("received signal ", signal_number));
  // Whatever happens below, the process is gone soon after the drain's limit: a pod that
  // overstays its grace period is killed, and a test waiting for the exit hangs.
  std::thread([limit = options.drain_timeout + absl::Seconds(20)] {
    absl::SleepFor(limit);
    lstmserve::server::LogError("the shutdown did not end within --drain_timeout + 20 s; exiting now");
    std::fflush(nullptr);
    _exit(1);
  }).detach();
  (*server)->Drain();
  server->reset();  // everything the server started is stopped and joined here
  std::fflush(nullptr);
#if defined(__SANITIZE_ADDRESS__)
  return 0;  // under ASan the normal exit runs, so that LeakSanitizer checks
#else
  // The store is on disk and every thread the server started has ended: skip the static
  // destructors and atexit handlers of gRPC, LibTorch and the OpenMP runtime, whose teardown
  // beside their parked threads once kept a drained server from exiting for over 30 s.
  _exit(0);
#endif
}
