// Threads that run set creation and analysis (inference has the batcher), so that gRPC's own
// threads never block on compute: a call is started (and counts as in flight) as soon as it
// arrives.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace lstmserve::server {

// Thread-safe. Tasks run in submission order on `threads` threads; the destructor runs the
// tasks already queued, then joins.
class ComputePool {
 public:
  explicit ComputePool(int threads);
  ~ComputePool();
  ComputePool(const ComputePool&) = delete;
  ComputePool& operator=(const ComputePool&) = delete;

  void Submit(std::function<void()> task);

 private:
  void Work();

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace lstmserve::server
