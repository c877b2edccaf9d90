#include "lstmserve/server/engine/sequence_store.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"

namespace lstmserve::server {
namespace {

// A sequence as its client names it: the id after the key's "u:" or "s:".
std::string Shown(const std::string& key) {
  const size_t colon = key.find(':');
  return core::ClientText(colon == std::string::npos ? key : key.substr(colon + 1));
}

}  // namespace

SequenceStore::SequenceStore(int64_t max_sequences, absl::Duration idle_timeout)
    : max_sequences_(max_sequences), idle_timeout_(idle_timeout), reaper_([this] { Reap(); }) {}

SequenceStore::~SequenceStore() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  reaper_.join();
}

absl::Status SequenceStore::Admit() {
  if (static_cast<int64_t>(open_.size()) >= max_sequences_) {
    ++rejected_;
    return absl::ResourceExhaustedError(absl::StrCat(max_sequences_,
                                                     " sessions and sequences are open (--max_sessions); end one "
                                                     "or retry on another replica"));
  }
  return absl::OkStatus();
}

absl::Status SequenceStore::Open(const std::string& key, std::function<void()> on_idle) {
  absl::MutexLock lock(&mu_);
  LSTMSERVE_RETURN_IF_ERROR(Admit());
  Sequence& s = open_[key];
  s.last_seen = absl::Now();
  s.on_idle = std::move(on_idle);
  s.stream = true;
  return absl::OkStatus();
}

void SequenceStore::Touch(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = open_.find(key);
  if (it != open_.end() && it->second.last_seen != absl::InfiniteFuture()) it->second.last_seen = absl::Now();
}

void SequenceStore::Close(const std::string& key) {
  absl::MutexLock lock(&mu_);
  open_.erase(key);
}

absl::StatusOr<core::LstmState> SequenceStore::Acquire(const std::string& key, const std::string& set_id, bool start) {
  absl::MutexLock lock(&mu_);
  auto it = open_.find(key);
  if (it != open_.end() && it->second.busy) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a request of sequence ", Shown(key),
        " is in flight; send a sequence's requests one at a time, each after the previous one's response"));
  }
  if (start) {
    if (it == open_.end()) {
      LSTMSERVE_RETURN_IF_ERROR(Admit());
      it = open_.emplace(key, Sequence()).first;
    }
    Sequence& s = it->second;
    s = Sequence();
    s.set_id = set_id;
    s.busy = true;
    s.last_seen = absl::Now();
    return core::LstmState();
  }
  if (it == open_.end() || it->second.stream) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", Shown(key),
                                                   " is not open: start it with sequence_start=true (it may have "
                                                   "ended, or idled out after --session_idle_timeout)"));
  }
  Sequence& s = it->second;
  if (s.set_id != set_id) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", Shown(key), " runs on model '",
                                                   core::ClientText(s.set_id), "', not '", core::ClientText(set_id),
                                                   "'; a sequence keeps one model"));
  }
  s.busy = true;
  s.last_seen = absl::Now();
  return s.state;
}

void SequenceStore::Release(const std::string& key, absl::StatusOr<core::LstmState> state, bool end) {
  absl::MutexLock lock(&mu_);
  auto it = open_.find(key);
  if (it == open_.end()) return;
  Sequence& s = it->second;
  if (state.ok() && !end) {
    s.state = *std::move(state);
    s.started = true;
  } else if (end || !s.started) {
    open_.erase(it);
    return;
  }
  s.busy = false;
  s.last_seen = absl::Now();
}

SequenceStore::Stats SequenceStore::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.active = static_cast<int64_t>(open_.size());
  stats.steps = steps_.load(std::memory_order_relaxed);
  stats.rejected = rejected_;
  stats.idle_cancelled = idle_cancelled_;
  return stats;
}

void SequenceStore::Reap() {
  const absl::Duration period = std::min(absl::Seconds(1), idle_timeout_ / 4);
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), period);
    const absl::Time now = absl::Now();
    for (auto it = open_.begin(); it != open_.end();) {
      Sequence& s = it->second;
      if (s.busy || now - s.last_seen <= idle_timeout_) {
        ++it;
        continue;
      }
      ++idle_cancelled_;
      if (s.stream) {
        s.on_idle();
        s.last_seen = absl::InfiniteFuture();  // once; the stream Closes when it is done
        ++it;
      } else {
        it = open_.erase(it);
      }
    }
  }
}

}  // namespace lstmserve::server
