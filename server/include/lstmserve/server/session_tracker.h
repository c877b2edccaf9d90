// Open Session streams: a cap on their number, and cancellation of idle ones.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lstmserve::server {

// Thread-safe. A reaper thread cancels sessions with no message for `idle_timeout`; it
// holds the lock while it does, and a session leaves (Remove) under the same lock before
// its reactor is deleted, so a cancelled context is always alive.
class SessionTracker {
 public:
  SessionTracker(int64_t max_sessions, absl::Duration idle_timeout);
  ~SessionTracker();

  // RESOURCE_EXHAUSTED when max_sessions are open.
  absl::Status Add(grpc::CallbackServerContext* context);
  void Touch(grpc::CallbackServerContext* context);   // a message arrived
  void Remove(grpc::CallbackServerContext* context);  // the stream is done
  void StepDone() { steps_.fetch_add(1, std::memory_order_relaxed); }  // a step was answered

  // Totals since start and the number open now, for metrics and logs.
  struct Stats {
    int64_t active = 0;
    int64_t steps = 0;
    int64_t rejected = 0;        // Add refused past max_sessions
    int64_t idle_cancelled = 0;  // cancelled by the reaper
  };
  Stats stats() const;

 private:
  void Reap();

  const int64_t max_sessions_;
  const absl::Duration idle_timeout_;
  mutable absl::Mutex mu_;
  std::map<grpc::CallbackServerContext*, absl::Time> last_seen_ ABSL_GUARDED_BY(mu_);
  int64_t idle_cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> steps_{0};
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

}  // namespace lstmserve::server
