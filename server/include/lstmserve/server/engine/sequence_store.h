// Open sequences, whatever the protocol.
//  - Stored sequences (the Open Inference Protocol's sequence extension): records in a
//    SequenceBackend (this process's memory, or a Redis every replica shares), each the
//    sequence's set and its checksum, its step count, its state and its last answer. The
//    engine (InferenceEngine::SubmitSequenceStep) loads a record, computes, and commits the
//    new record under a compare-and-set of its version.
//    lstmserve.v1 Sessions' steps are stored sequences' too (named by the client, or by the
//    server when it names none).
//  - The Session streams themselves, tracked here so that one idle for the idle timeout is
//    cancelled (its record expires then too).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <ATen/core/Tensor.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/server/engine/compute_pool.h"
#include "lstmserve/server/engine/sequence_backend.h"

namespace lstmserve::server {

// A stored sequence, as every replica reads it.
struct SequenceRecord {
  std::string set_id;
  std::string set_checksum;  // the set's when the sequence started: a set re-created since differs
  uint64_t steps = 0;        // time steps taken
  core::LstmState state;     // after them: per layer, [B, H] host tensors of the set's dtype
  // The last acknowledged request, answered again to an exact retry of it:
  uint64_t last_step = 0;    // steps before it
  std::string last_request;  // its fingerprint (SHA-256 of its inputs and flags)
  at::Tensor last_outputs;   // its OUTPUT [T, B, H], when it asked for it
};

// A compact binary form (little-endian, versioned); Decode gives DATA_LOSS for bytes that
// are not one.
std::string EncodeSequenceRecord(const SequenceRecord& record);
absl::StatusOr<SequenceRecord> DecodeSequenceRecord(const std::string& bytes);

// Thread-safe.
class SequenceStore {
 public:
  // `max_sequences`: records in the backend; `idle_timeout`: a sequence not stepped for
  // this long expires, and a stream that long silent is cancelled.
  SequenceStore(std::unique_ptr<SequenceBackend> backend, int64_t max_sequences, absl::Duration idle_timeout);
  // In memory (tests).
  SequenceStore(int64_t max_sequences, absl::Duration idle_timeout)
      : SequenceStore(NewMemorySequenceBackend(), max_sequences, idle_timeout) {}
  ~SequenceStore();
  SequenceStore(const SequenceStore&) = delete;
  SequenceStore& operator=(const SequenceStore&) = delete;

  // --- Session streams: `on_idle` runs (once) when one is silent for the idle timeout,
  // `on_drain` when the server drains (DrainStreams); both under the store's lock. `key` is
  // unique among open ones.
  void Open(const std::string& key, std::function<void()> on_idle, std::function<void()> on_drain = {});
  void Touch(const std::string& key);  // a message arrived
  void Close(const std::string& key);  // the stream is done
  void DrainStreams();                 // the server is draining: each open stream's on_drain

  // --- Stored sequences.
  // One request of a sequence at a time in this process: FAILED_PRECONDITION while another
  // holds `key`. (Across replicas, Commit's compare-and-set keeps them apart.)
  absl::Status Claim(const std::string& key, const std::string& shown);
  void Unclaim(const std::string& key);

  // A sequence's record as loaded: `version` empty when there is none (then `trace` says
  // what the last write or end left, if it is still kept).
  struct Loaded {
    std::string version;
    std::optional<SequenceRecord> record;
    std::string trace;
    bool from_copy = false;  // this process's copy: another replica may have moved on since
  };
  // The copy this process committed last when the backend is its own or `trust_copy`, else
  // the backend's. UNAVAILABLE when the backend cannot be reached; DATA_LOSS for a record
  // that does not decode.
  absl::StatusOr<Loaded> Load(const std::string& key, bool trust_copy = true);
  // Writes `record` if the sequence is still at `expected` (empty: none), or, with `end`,
  // removes it; returns the new version ("" after an end), or nullopt when another version
  // is there now (this process's copy is dropped). RESOURCE_EXHAUSTED past max_sequences.
  absl::StatusOr<std::optional<std::string>> Commit(const std::string& key, const std::string& expected,
                                                    const SequenceRecord& record, bool end);

  // What a trace says (SequenceStore writes them): "L<steps>" while live, "E" + the final
  // record once ended.
  struct Trace {
    bool ended = false;
    uint64_t steps = 0;
    std::optional<SequenceRecord> final_record;  // ended: the record as it ended
  };
  static Trace ReadTrace(const std::string& trace);

  void StepDone() { steps_.fetch_add(1, std::memory_order_relaxed); }  // a step was answered

  const SequenceBackend& backend() const { return *backend_; }
  // Runs `task` where a step's commit should run: at once on a thread that is not a
  // batcher's; on a batcher's thread, on threads of the store's, so that the batch thread
  // goes on to the next batch while this one's steps are committed side by side (with Redis
  // a round trip each, and Redis fsyncs what one pass of its event loop wrote together, so
  // concurrent commits also share their fsync; in memory, a record's encoding each).
  void RunCommit(std::function<void()> task);
  absl::Duration idle_timeout() const { return idle_timeout_; }

  // Totals since start and the number open now, for metrics and logs.
  struct Stats {
    int64_t active = 0;  // stored sequences (-1: the backend did not answer)
    int64_t steps = 0;
    int64_t rejected = 0;        // refused past max_sequences
    int64_t idle_cancelled = 0;  // streams ended by the reaper
  };
  Stats stats() const;

  // Per backend operation (load, commit), for metrics: calls, failures, seconds in them.
  struct BackendStats {
    int64_t loads = 0, load_errors = 0, commits = 0, commit_errors = 0, conflicts = 0, copies_used = 0;
    double load_seconds = 0, commit_seconds = 0;
  };
  BackendStats backend_stats() const;

 private:
  struct Stream {
    absl::Time last_seen;
    std::function<void()> on_idle;
    std::function<void()> on_drain;
  };
  struct Copy {
    std::string version;
    SequenceRecord record;
  };
  void Reap();

  const std::unique_ptr<SequenceBackend> backend_;
  std::unique_ptr<ComputePool> committers_;
  const int64_t max_sequences_;
  const absl::Duration idle_timeout_;
  mutable absl::Mutex mu_;
  std::map<std::string, Stream> streams_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> claimed_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Copy> copies_ ABSL_GUARDED_BY(mu_);  // what this process committed last
  int64_t idle_cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  BackendStats backend_stats_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> steps_{0};
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

// Threads that commit the steps of a batch to the sequence store.
inline constexpr int kSequenceCommitThreads = 16;

}  // namespace lstmserve::server
