#include "lstmserve/server/engine/model_statistics.h"

#include <algorithm>

namespace lstmserve::server {

void ModelStatistics::RecordRequest(const std::string& model, bool ok, absl::Duration total) {
  absl::MutexLock lock(&mu_);
  Entry& e = models_[model];
  (ok ? e.stats.success : e.stats.fail).Add(total);
}

void ModelStatistics::RecordExecution(const std::string& model, const ExecutionTimes& times) {
  const auto requests = static_cast<uint64_t>(times.queue_waits.size());
  absl::MutexLock lock(&mu_);
  Entry& e = models_[model];
  e.stats.last_inference_ms = static_cast<uint64_t>(std::max<int64_t>(0, absl::ToUnixMillis(times.finished)));
  e.stats.inference_count += static_cast<uint64_t>(times.rows);
  ++e.stats.execution_count;
  for (const absl::Duration wait : times.queue_waits) e.stats.queue.Add(wait);
  e.stats.compute_input.Add(times.input, requests);
  e.stats.compute_infer.Add(times.infer, requests);
  e.stats.compute_output.Add(times.output, requests);
  BatchSizeStats& b = e.by_size[times.rows];
  b.batch_size = static_cast<uint64_t>(times.rows);
  b.compute_input.Add(times.input);
  b.compute_infer.Add(times.infer);
  b.compute_output.Add(times.output);
}

ModelStats ModelStatistics::Get(const std::string& model) const {
  ModelStats out;
  {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(model);
    if (it != models_.end()) {
      out = it->second.stats;
      for (const auto& [size, b] : it->second.by_size) out.batch_stats.push_back(b);
    }
  }
  out.name = model;
  return out;
}

}  // namespace lstmserve::server
