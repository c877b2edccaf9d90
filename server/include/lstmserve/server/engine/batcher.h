// The dynamic batcher: concurrent Step, Run and Session-step requests on the same set are
// merged along the batch dimension into one core call and split back.
//
// Requests merge when they use the same set, the same number of steps T (a Step is T=1),
// and the same output mode; a batch holds at most max_batch_size rows (the sum of the
// requests' B). A worker takes the oldest request and adds every compatible queued one.
// Under load (its previous batch held more than one row) it keeps collecting while
// requests keep arriving. With a budget of half its previous batch's compute time (at most
// batch_timeout), it stops when the batch is full, when the budget is spent, or after a
// quiet gap with no arrival of a quarter of the budget (at least 50 us): the callers it
// just answered are about to send again, and the wait stays small next to the work it
// batches. A lone caller never waits. Past max_queued_requests, Submit answers RESOURCE_EXHAUSTED at once. A request
// whose deadline passes or whose call is cancelled while it waits is answered and dropped,
// never computed.
//
// A small request on a CPU set that finds the queue empty, a compute slot free (fewer than
// num_batch_threads batches computing) and the server not under load (the last batch held
// one request) is computed at once on the submitting thread
// (gRPC's), as a batch of one: a hand-off to a sleeping worker costs a thread wake-up
// (~30 us of an S Step's 70 us in the server on this project's machine), and nothing else
// is waiting to merge with it. The slots keep the number of concurrent computations at
// num_batch_threads either way.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include "lstmserve/core/device_runner.h"
#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/server/engine/clock.h"
#include "lstmserve/server/engine/model_statistics.h"
#include "lstmserve/server/engine/set_registry.h"
#include "lstmserve/server/metrics.h"

namespace lstmserve::server {

struct BatchOptions {
  bool enabled = true;                                    // false: one request per core call
  int64_t max_batch_size = 256;                           // rows (sum of B) per core call
  absl::Duration batch_timeout = absl::Milliseconds(10);  // most a batch waits to fill, under load
  int num_batch_threads = 1;                              // workers; x intra-op threads <= cores
  int64_t max_queued_requests = 4096;                     // beyond: RESOURCE_EXHAUSTED
  // Lone requests of at most this many multiply-adds (batch x steps x weights) run on the
  // submitting thread (see above); 0 turns that off. The default is about 50 us of compute.
  int64_t inline_max_work = int64_t{1} << 21;
  // The core path of every batch (kAuto: picked per batch).
  core::LstmPath path = core::LstmPath::kAuto;
};

// One request. `inputs` is [T, B, I] on the host (CPU); `state` is empty or full (validated
// beforehand with StackedLstm::CheckRunShapes, so a batch cannot fail because of one of its
// requests). The worker merges a batch on the host and its core::DeviceRunner moves it to the
// set's device (on a GPU: pinned buffers, the worker's own stream) and the results back.
struct BatchJob {
  std::shared_ptr<const SetEntry> set;
  at::Tensor inputs;
  core::LstmState state;
  bool want_outputs = true;
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;  // optional
  // Called exactly once, on a worker thread (or in Submit's caller on rejection).
  std::function<void(absl::StatusOr<core::SequenceResult>)> done;
  absl::Time enqueued;  // set by Submit
};

// Statistics since start, for tests and metrics.
struct BatchStats {
  int64_t batches = 0;
  int64_t requests = 0;   // computed
  int64_t rows = 0;       // sum of batch rows computed
  int64_t max_rows = 0;   // largest batch
  int64_t rejected = 0;   // queue full
  int64_t expired = 0;    // deadline passed while queued
  int64_t cancelled = 0;  // cancelled while queued
  int64_t queued = 0;     // waiting now
  int64_t inlined = 0;    // computed on the submitting thread (a batch of one)
};

// Thread-safe.
class Batcher {
 public:
  // `metrics` (optional) is told of every batch and queue wait; `clock` (optional: the real
  // one) gives the time of queue waits, deadlines and the waits to fill a batch;
  // `statistics` (optional) gets each batch's per-model figures. All must outlive the batcher.
  explicit Batcher(const BatchOptions& options, Metrics* metrics = nullptr, const Clock* clock = nullptr,
                   ModelStatistics* statistics = nullptr);
  ~Batcher();  // runs what is queued, then joins
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Whether the calling thread is one of a batcher's (where jobs' `done` run, one after the
  // other, for a whole batch), rather than the thread that submitted an inline job.
  static bool OnBatchThread();

  // Queues a job, or answers it RESOURCE_EXHAUSTED when the queue is full.
  void Submit(BatchJob job);

  BatchStats stats() const;

 private:
  void Work();
  // Whether a job may run on the submitting thread: a CPU set and at most inline_max_work.
  bool Small(const BatchJob& job) const;
  // Takes the oldest job and the compatible ones after it, collecting more as described
  // above (mu_ held; released while waiting).
  std::vector<BatchJob> TakeBatch(int64_t previous_rows, absl::Duration previous_compute)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves compatible queued jobs into `batch` while it has room; returns its rows.
  int64_t Fill(std::vector<BatchJob>& batch, int64_t rows) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Computes a batch and answers its jobs; returns the time of the core call alone (what
  // the next batch may spend waiting to fill is bounded by half of it).
  absl::Duration Run(std::vector<BatchJob> batch, core::DeviceRunner& runner);

  const BatchOptions options_;
  Metrics* const metrics_;
  const Clock& clock_;
  ModelStatistics* const statistics_;
  mutable absl::Mutex mu_;
  std::deque<BatchJob> queue_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;                     // batches computing now (workers' and inline)
  int64_t last_batch_requests_ ABSL_GUARDED_BY(mu_) = 1;  // requests in the last batch computed
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  BatchStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
};

}  // namespace lstmserve::server
