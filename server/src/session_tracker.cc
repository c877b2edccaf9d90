#include "lstmserve/server/session_tracker.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace lstmserve::server {

SessionTracker::SessionTracker(int64_t max_sessions, absl::Duration idle_timeout)
    : max_sessions_(max_sessions), idle_timeout_(idle_timeout), reaper_([this] { Reap(); }) {}

SessionTracker::~SessionTracker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  reaper_.join();
}

absl::Status SessionTracker::Add(grpc::CallbackServerContext* context) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(last_seen_.size()) >= max_sessions_) {
    ++rejected_;
    return absl::ResourceExhaustedError(absl::StrCat(max_sessions_, " sessions are open (--max_sessions); close one "
                                                     "or retry on another replica"));
  }
  last_seen_[context] = absl::Now();
  return absl::OkStatus();
}

void SessionTracker::Touch(grpc::CallbackServerContext* context) {
  absl::MutexLock lock(&mu_);
  auto it = last_seen_.find(context);
  if (it != last_seen_.end()) it->second = absl::Now();
}

void SessionTracker::Remove(grpc::CallbackServerContext* context) {
  absl::MutexLock lock(&mu_);
  last_seen_.erase(context);
}

SessionTracker::Stats SessionTracker::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.active = static_cast<int64_t>(last_seen_.size());
  stats.steps = steps_.load(std::memory_order_relaxed);
  stats.rejected = rejected_;
  stats.idle_cancelled = idle_cancelled_;
  return stats;
}

void SessionTracker::Reap() {
  const absl::Duration period = std::min(absl::Seconds(1), idle_timeout_ / 4);
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), period);
    const absl::Time now = absl::Now();
    for (auto& [context, last] : last_seen_) {
      if (now - last > idle_timeout_) {
        context->TryCancel();
        last = absl::InfiniteFuture();  // cancel once
        ++idle_cancelled_;
      }
    }
  }
}

}  // namespace lstmserve::server
