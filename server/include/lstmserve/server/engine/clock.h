// Time as the batcher reads and waits on it: the process's clock, or a manual one that tests
// move by hand, so that deadlines and waits are tested without sleeping (as TF Serving's
// batching takes an Env).
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace lstmserve::server {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // As absl::Mutex::AwaitWithDeadline on `mu`, which the caller holds: waits until `cond`
  // holds or this clock reaches `deadline`, and returns whether `cond` holds.
  virtual bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond, absl::Time deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
  // absl::Now and absl::Mutex's own timed wait.
  static const Clock& Real();
};

// A clock that stands still until Advance. A wait on it ends when its condition holds or
// when Advance carries the clock past its deadline (seen within a millisecond).
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'000'000'000)) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond, absl::Time deadline) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    while (!cond.Eval()) {
      if (Now() >= deadline) return false;
      mu.AwaitWithTimeout(cond, absl::Milliseconds(1));
    }
    return true;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lstmserve::server
