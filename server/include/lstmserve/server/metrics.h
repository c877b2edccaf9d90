// Prometheus metrics of the server (prometheus-cpp), served over HTTP at /metrics.
//
// Every family and every labelled child is made when the server starts, so hot paths only
// increment what exists and the label sets stay bounded: no label takes a value per
// parameter set or per client. Three kinds of source feed it:
//   - a gRPC interceptor counts every call by service, method and status code and times it,
//     and the HTTP front end reports its calls the same way (ObserveRequest);
//   - the batcher and the set registry report events (batch sizes, waits, store writes);
//   - at scrape time, a snapshot reads gauges and counters the components already keep
//     (queue depth, sessions, sets held, rejections) and the process's own figures
//     (/proc/self: CPU seconds, resident memory, open fds, threads).
// The list of names is in README ("Metrics").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc::experimental {
class ServerInterceptorFactoryInterface;
}  // namespace grpc::experimental

namespace lstmserve::server {

// What the server reports of itself at each scrape. Counters are totals since start.
struct MetricsSnapshot {
  int64_t queue_depth = 0;          // inference requests waiting for a batch
  int64_t queue_capacity = 0;       // --max_queued_requests
  int64_t rejected_queue_full = 0;  // Submit found the queue full
  int64_t expired_deadline = 0;     // deadline passed in the queue; not computed
  int64_t expired_cancelled = 0;    // cancelled in the queue; not computed
  int64_t sessions_active = 0;
  int64_t session_steps = 0;
  int64_t sessions_rejected = 0;        // past --max_sequences
  int64_t sessions_idle_cancelled = 0;  // past --sequence_idle_timeout
  // The sequence store's operations (SequenceStore::BackendStats).
  int64_t sequence_loads = 0, sequence_load_errors = 0, sequence_commits = 0, sequence_commit_errors = 0;
  int64_t sequence_conflicts = 0, sequence_copies_used = 0;
  double sequence_load_seconds = 0, sequence_commit_seconds = 0;
  std::string sequence_store;  // SequenceBackend::Describe()
  int64_t parameter_sets = 0;
  int64_t parameter_set_bytes = 0;          // derived layouts included
  int64_t parameter_set_derived_bytes = 0;  // SetRegistry::derived_bytes
  // Only on CUDA: the caching allocator's current figures.
  std::optional<int64_t> device_memory_allocated_bytes;
  std::optional<int64_t> device_memory_reserved_bytes;
};

// Labels of lstmserve_build_info.
struct BuildInfo {
  std::string version;
  std::string libtorch_version;
  std::string device;
  std::string blas;       // the CPU BLAS LibTorch calls: "openblas", "mkl" or "unknown"
  std::string blas_core;  // OpenBLAS's kernels ("Haswell", "SkylakeX", ...); empty for others
  std::string isa;        // the level the core's CPU kernels run at: "avx512", "avx2", "baseline"
};

enum class StoreOperation { kLoad, kRead, kWrite, kDelete };

// Thread-safe.
class Metrics {
 public:
  explicit Metrics(const BuildInfo& build);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves /metrics on "HOST:PORT" (port 0 picks a free one); returns the bound address.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot bind.
  absl::StatusOr<std::string> Serve(const std::string& listen);
  // Stops serving (before the sources of the snapshot go away). Idempotent.
  void StopServing();

  // Called at each scrape, on the HTTP thread; must be thread-safe.
  void SetSnapshotSource(std::function<MetricsSnapshot()> source);

  // Counts and times every gRPC call; pass to ServerBuilder's interceptor creators.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeInterceptorFactory();

  // One call of a front end that is not gRPC (the interceptor counts those): `service` and
  // `method` among the names made at start (access.h: kHttpService, HttpRoutes()), else counted
  // as
  // "other".
  void ObserveRequest(absl::string_view service, absl::string_view method, absl::StatusCode code,
                      absl::Duration duration);

  // Batcher events: one per computed batch, one per request taken from the queue.
  void ObserveBatch(int64_t rows, absl::Duration compute);
  // The core kernel a computed batch ran (core::StackedLstm::KernelName).
  void ObserveKernel(const char* kernel);
  void ObserveQueueWait(absl::Duration wait);
  // The server's own hops of a Step or Run call, beside the queue wait and the compute:
  // decode (request bytes -> message), validate (message -> queued job: tensors decoded and
  // checked), encode (result -> response bytes).
  void ObserveInferencePhases(absl::Duration decode, absl::Duration validate, absl::Duration encode);
  // Set registry events.
  void ObserveStore(StoreOperation operation, bool ok);
  void SetStoreLoadTime(absl::Duration load);
  // A set dropped from memory: to make room (memory) or by the repository's unload.
  void ObserveSetUnload(bool memory);

  struct Impl;  // in metrics.cc; shared with the interceptors, which may outlive this

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace lstmserve::server
