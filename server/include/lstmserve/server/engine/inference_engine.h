// The protocol-neutral engine under the inference front ends (lstmserve.v1 over gRPC, the
// Open Inference Protocol over gRPC and HTTP): it finds LSTM sets, turns validated requests
// into batch jobs with their deadline and cancellation as values, queues them on the
// batcher, and keeps sequences between requests. It knows no wire type.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/server/engine/batcher.h"
#include "lstmserve/server/engine/model_statistics.h"
#include "lstmserve/server/engine/sequence_store.h"
#include "lstmserve/server/engine/set_registry.h"

namespace lstmserve::server {

// What a front end knows of a call: when its answer stops being wanted.
struct CallControl {
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;    // optional; true once the caller has gone
  absl::Time received = absl::Now();  // when the call arrived (made with it): the model statistics' durations
};

// One request of a stored sequence (SequenceStore): its record is loaded, the request is
// computed from the record's state, and the new record is committed before the answer.
struct SequenceStep {
  std::string key;    // in the store ("u:7", "s:abc")
  std::string shown;  // the id as the client gave it, for messages
  std::shared_ptr<const SetEntry> set;
  at::Tensor inputs;                     // [T, B, I]
  std::optional<core::LstmState> state;  // given by the client: the state to go on from
  bool start = false;                    // (re)start the sequence: from `state`, or zeros
  bool end = false;                      // end it after this request
  // The steps the sequence has taken before this request, when the client says (its
  // sequence_step): a request that was already applied is answered again, bit for bit,
  // without advancing; any other mismatch is FAILED_PRECONDITION.
  std::optional<uint64_t> expected_step;
  bool want_outputs = true;
  // How the front end names the inputs and the state, for messages.
  std::string inputs_name = "inputs";
  std::string state_name = "an initial state";
};
struct SequenceAnswer {
  core::SequenceResult result;
  uint64_t steps = 0;     // the sequence's steps after this request
  bool replayed = false;  // a retry of the last request, answered from its record
};

// Thread-safe. Borrows everything it is given, which must outlive it.
class InferenceEngine {
 public:
  // `statistics` (optional) counts each request's success or failure per model (the batcher
  // it shares with counts the rest).
  InferenceEngine(SetRegistry* registry, Batcher* batcher, SequenceStore* sequences, int64_t max_tensor_elements,
                  ModelStatistics* statistics = nullptr)
      : registry_(registry),
        batcher_(batcher),
        sequences_(sequences),
        max_tensor_elements_(max_tensor_elements),
        statistics_(statistics) {}

  // The set `id`, when it is a stacked LSTM and not unloaded; FAILED_PRECONDITION when it
  // is not an LSTM or was unloaded (SetRegistry::Unload), and the registry's errors
  // (NOT_FOUND, ...).
  absl::StatusOr<std::shared_ptr<const SetEntry>> LstmSet(const std::string& id) const;

  // A batch job for `inputs` [T, B, I] and `state` (empty, or one [B, H] tensor per layer in
  // c and h), all host tensors of the set's dtype; INVALID_ARGUMENT (from
  // StackedLstm::CheckRunShapes) when they do not fit the set. The caller sets `done`.
  absl::StatusOr<BatchJob> MakeJob(const CallControl& call, std::shared_ptr<const SetEntry> set, at::Tensor inputs,
                                   core::LstmState state, bool want_outputs) const;
  // Queues a job; its `done` is called once (perhaps before Submit returns). The request's
  // success or failure is counted in the model's statistics.
  void Submit(const CallControl& call, BatchJob job) const;
  // A request on set `id` that failed before it was queued (its inputs did not fit the set):
  // counted in the model's statistics.
  void CountFailure(const std::string& id, const CallControl& call) const;

  // Runs one request of a stored sequence; `done` is called once, perhaps before this
  // returns, after the sequence's new record is written. Lifecycle errors name what became
  // of the sequence (never started, ended, expired, on another set, its set re-created) as
  // FAILED_PRECONDITION (INVALID_ARGUMENT for another set); UNAVAILABLE when the sequence
  // store cannot be reached (nothing was applied); ABORTED when other replicas kept
  // advancing the sequence while this one computed.
  void SubmitSequenceStep(const CallControl& call, SequenceStep step,
                          std::function<void(absl::StatusOr<SequenceAnswer>)> done) const;

  // The record of stored sequence `key` (`shown`: its id for messages), read from the store
  // itself: NOT_FOUND saying why when it is not open, UNAVAILABLE when the store is not
  // reached.
  absl::StatusOr<SequenceRecord> GetSequence(const std::string& key, const std::string& shown) const;

  // Ends stored sequence `key` without a step (a Session the server named, closed by its
  // client): its record goes, its trace says it ended. OK when it is not open;
  // FAILED_PRECONDITION while a request of it is in flight here; UNAVAILABLE when the store
  // is not reached (the record then expires after the idle timeout).
  absl::Status EndSequence(const std::string& key, const std::string& shown) const;

  SequenceStore& sequences() const { return *sequences_; }
  Batcher& batcher() const { return *batcher_; }
  SetRegistry& registry() const { return *registry_; }
  ModelStatistics* statistics() const { return statistics_; }
  int64_t max_tensor_elements() const { return max_tensor_elements_; }

 private:
  SetRegistry* const registry_;
  Batcher* const batcher_;
  SequenceStore* const sequences_;
  const int64_t max_tensor_elements_;
  ModelStatistics* const statistics_;

  // `done`, which first counts the request on set `id` in the statistics (when there are).
  template <typename Result>
  std::function<void(Result)> Counted(const std::string& id, const CallControl& call,
                                      std::function<void(Result)> done) const {
    if (statistics_ == nullptr) return done;
    return [statistics = statistics_, id, received = call.received, done = std::move(done)](Result result) {
      statistics->RecordRequest(id, result.ok(), absl::Now() - received);
      done(std::move(result));
    };
  }
};

}  // namespace lstmserve::server
