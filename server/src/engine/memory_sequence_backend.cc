#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

#include "lstmserve/server/engine/sequence_backend.h"

namespace lstmserve::server {
namespace {

class MemorySequenceBackend final : public SequenceBackend {
 public:
  absl::StatusOr<BackendRecord> Get(const std::string& key) override {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    BackendRecord out;
    if (auto it = records_.find(key); it != records_.end()) {
      if (it->second.expires > now) {
        out.version = it->second.version;
        out.bytes = it->second.bytes;
        return out;
      }
      records_.erase(it);
    }
    if (auto it = traces_.find(key); it != traces_.end()) {
      if (it->second.expires > now) {
        out.trace = it->second.text;
      } else {
        EraseTrace(it);
      }
    }
    return out;
  }

  absl::StatusOr<bool> Put(const std::string& key, const std::string& expected, const std::string& version,
                           const std::string& bytes, absl::Duration ttl, const std::string& trace,
                           int64_t max_records) override {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    auto it = records_.find(key);
    if (it != records_.end() && it->second.expires <= now) {
      records_.erase(it);
      it = records_.end();
    }
    const std::string& current = it == records_.end() ? kNone : it->second.version;
    if (current != expected) return false;
    if (it == records_.end()) {
      if (static_cast<int64_t>(records_.size()) >= max_records) Sweep(now);
      if (static_cast<int64_t>(records_.size()) >= max_records) {
        return absl::ResourceExhaustedError(absl::StrCat(max_records, " sequences are open (--max_sequences)"));
      }
      it = records_.emplace(key, Record()).first;
    }
    it->second = Record{version, bytes, now + ttl};
    SetTrace(key, trace, now + ttl + kSequenceTraceTime);
    if (++writes_ % 4096 == 0) Sweep(now);
    return true;
  }

  absl::StatusOr<bool> End(const std::string& key, const std::string& expected, const std::string& trace) override {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(key);
    if (it == records_.end() || it->second.version != expected) return false;
    records_.erase(it);
    SetTrace(key, trace, absl::Now() + kSequenceTraceTime);
    return true;
  }

  absl::StatusOr<int64_t> Count() override {
    absl::MutexLock lock(&mu_);
    Sweep(absl::Now());
    return static_cast<int64_t>(records_.size());
  }

  std::string Describe() const override { return "memory"; }
  bool shared() const override { return false; }

 private:
  struct Record {
    std::string version;
    std::string bytes;
    absl::Time expires;
  };
  struct Trace {
    std::string text;
    absl::Time expires;
  };

  void Sweep(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto it = records_.begin(); it != records_.end();) {
      it = it->second.expires <= now ? records_.erase(it) : std::next(it);
    }
    for (auto it = traces_.begin(); it != traces_.end();) {
      it = it->second.expires <= now ? EraseTrace(it) : std::next(it);
    }
  }

  // Traces (an ended sequence's holds its final record) take at most kMemoryTraceBytes:
  // past it, the expired go, then others, so that ending sequences fast cannot grow the
  // process; a client whose trace went is told its sequence was never started or is gone.
  void SetTrace(const std::string& key, const std::string& text, absl::Time expires)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (auto old = traces_.find(key); old != traces_.end()) EraseTrace(old);
    trace_bytes_ += static_cast<int64_t>(key.size() + text.size());
    traces_[key] = Trace{text, expires};
    if (trace_bytes_ <= kMemoryTraceBytes) return;
    Sweep(absl::Now());
    for (auto it = traces_.begin(); it != traces_.end() && trace_bytes_ > kMemoryTraceBytes * 3 / 4;) {
      it = it->first == key ? std::next(it) : EraseTrace(it);
    }
  }
  std::map<std::string, Trace>::iterator EraseTrace(std::map<std::string, Trace>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    trace_bytes_ -= static_cast<int64_t>(it->first.size() + it->second.text.size());
    return traces_.erase(it);
  }

  inline static const std::string kNone;
  absl::Mutex mu_;
  std::map<std::string, Record> records_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Trace> traces_ ABSL_GUARDED_BY(mu_);
  int64_t writes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t trace_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::unique_ptr<SequenceBackend> NewMemorySequenceBackend() { return std::make_unique<MemorySequenceBackend>(); }

}  // namespace lstmserve::server
