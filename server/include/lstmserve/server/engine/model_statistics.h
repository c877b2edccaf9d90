// Per-model inference statistics, as Triton's statistics extension reports them
// (GET /v2/models/{m}/stats, ModelStatistics over gRPC): for each set, requests that
// succeeded and failed with their cumulative durations, and the cumulative queue, input,
// compute and output times of the requests computed, overall and per batch size.
//
// What each figure covers here:
//   success, fail     a request from its arrival (CallControl::received) to its answer; a
//                     failure counts once the set is known (an unknown model is no model's).
//   queue             from the batcher's queue to the start of its batch.
//   compute_input     merging the batch's inputs and states into one tensor.
//   compute_infer     the core call (on a GPU: with its copies to and from the device).
//   compute_output    splitting the batch's result back into each request's.
// Each request in a batch counts its batch's input, infer and output times once (as Triton
// does); `execution_count` counts batches, `inference_count` rows (the sum of requests' B),
// and batch_stats counts executions per batch size (rows).
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lstmserve::server {

struct StatDuration {
  uint64_t count = 0;
  uint64_t ns = 0;  // cumulative
  void Add(absl::Duration d, uint64_t times = 1) {
    count += times;
    ns += times * static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(d)));
  }
};

struct BatchSizeStats {
  uint64_t batch_size = 0;  // rows
  StatDuration compute_input, compute_infer, compute_output;
};

struct ModelStats {
  std::string name;
  uint64_t last_inference_ms = 0;  // milliseconds since the epoch; 0: never
  uint64_t inference_count = 0;    // rows computed
  uint64_t execution_count = 0;    // batches computed
  StatDuration success, fail, queue, compute_input, compute_infer, compute_output;
  std::vector<BatchSizeStats> batch_stats;  // by batch size, ascending
};

// One batch computed for a model, with its requests' queue waits and its phases.
struct ExecutionTimes {
  int64_t rows = 0;
  std::vector<absl::Duration> queue_waits;  // one per request in the batch
  absl::Duration input, infer, output;
  absl::Time finished;
};

// Thread-safe.
class ModelStatistics {
 public:
  void RecordRequest(const std::string& model, bool ok, absl::Duration total);
  void RecordExecution(const std::string& model, const ExecutionTimes& times);
  // The model's figures (zeros, with its name, when it has none). They are kept from the
  // server's start: a set deleted and created again under its id goes on counting.
  ModelStats Get(const std::string& model) const;

 private:
  struct Entry {
    ModelStats stats;
    std::map<int64_t, BatchSizeStats> by_size;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> models_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lstmserve::server
