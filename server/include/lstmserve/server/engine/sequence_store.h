// Open sequences, whatever the protocol: lstmserve.v1 Session streams, and the Open
// Inference Protocol's stateful sequences (Triton's sequence extension) whose LSTM state the
// store keeps between requests, keyed by id. One cap on their number, one idle timeout.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include "lstmserve/core/stacked_lstm.h"

namespace lstmserve::server {

// Thread-safe. A reaper thread ends sequences idle for `idle_timeout`: a stream's `on_idle`
// is called (once, under the store's lock, so a stream that Closes under the same lock before
// it is freed is alive when it is called); a stored sequence is dropped, unless one of its
// requests is in flight.
class SequenceStore {
 public:
  SequenceStore(int64_t max_sequences, absl::Duration idle_timeout);
  ~SequenceStore();
  SequenceStore(const SequenceStore&) = delete;
  SequenceStore& operator=(const SequenceStore&) = delete;

  // --- Streams, which hold their state themselves. `key` is unique among open ones.
  // RESOURCE_EXHAUSTED when max_sequences are open.
  absl::Status Open(const std::string& key, std::function<void()> on_idle);
  void Touch(const std::string& key);  // a message arrived
  void Close(const std::string& key);  // the stream is done

  // --- Stored sequences, one request at a time each.
  // Takes the state of sequence `key` on set `set_id` for one request. With `start`, the
  // sequence is (re)started and the state returned is empty (zeros, or the request's own);
  // RESOURCE_EXHAUSTED when max_sequences are open. Without: the state its last request left;
  // INVALID_ARGUMENT when it was never started or has ended (or idled out), or belongs to
  // another set. FAILED_PRECONDITION while another request of it is in flight.
  absl::StatusOr<core::LstmState> Acquire(const std::string& key, const std::string& set_id, bool start);
  // Ends the request Acquire began: stores `state` (or, when `end`, drops the sequence). A
  // failed request (`state` not OK) leaves the sequence at its previous state, or drops a
  // sequence that it was starting.
  void Release(const std::string& key, absl::StatusOr<core::LstmState> state, bool end);

  void StepDone() { steps_.fetch_add(1, std::memory_order_relaxed); }  // a step was answered

  // Totals since start and the number open now, for metrics and logs.
  struct Stats {
    int64_t active = 0;  // streams and stored sequences
    int64_t steps = 0;
    int64_t rejected = 0;        // refused past max_sequences
    int64_t idle_cancelled = 0;  // ended by the reaper
  };
  Stats stats() const;

 private:
  struct Sequence {
    absl::Time last_seen;
    std::function<void()> on_idle;  // streams only
    bool stream = false;
    // Stored sequences:
    std::string set_id;
    core::LstmState state;
    bool busy = false;     // a request is in flight
    bool started = false;  // false until its first request succeeded
  };
  absl::Status Admit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Reap();

  const int64_t max_sequences_;
  const absl::Duration idle_timeout_;
  mutable absl::Mutex mu_;
  std::map<std::string, Sequence> open_ ABSL_GUARDED_BY(mu_);
  int64_t idle_cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> steps_{0};
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

}  // namespace lstmserve::server
