#include "lstmserve/server/engine/inference_engine.h"

#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"

namespace lstmserve::server {

absl::StatusOr<std::shared_ptr<const SetEntry>> InferenceEngine::LstmSet(const std::string& id) const {
  if (registry_->Unloaded(id)) {
    return absl::FailedPreconditionError(absl::StrCat("parameter set '", id,
                                                      "' is unloaded; load it first (POST /v2/repository/models/", id,
                                                      "/load, or RepositoryModelLoad over gRPC)"));
  }
  LSTMSERVE_ASSIGN_OR_RETURN(auto entry, registry_->Get(id));
  if (!entry->lstm) {
    return absl::FailedPreconditionError(
        absl::StrCat("parameter set '", id,
                     "' is not a stacked LSTM: it needs tensors w_0.. of shape [in + H, 4H] "
                     "(and optionally b_0..); create it with spec.lstm"));
  }
  return entry;
}

absl::StatusOr<BatchJob> InferenceEngine::MakeJob(const CallControl& call, std::shared_ptr<const SetEntry> set,
                                                  at::Tensor inputs, core::LstmState state, bool want_outputs) const {
  LSTMSERVE_RETURN_IF_ERROR(set->lstm->CheckRunShapes(inputs, state));
  BatchJob job;
  job.set = std::move(set);
  job.inputs = std::move(inputs);
  job.state = std::move(state);
  job.want_outputs = want_outputs;
  job.deadline = call.deadline;
  job.cancelled = call.cancelled;
  return job;
}

void InferenceEngine::Submit(const CallControl& call, BatchJob job) const {
  job.done = Counted(job.set->stored.id, call, std::move(job.done));
  batcher_->Submit(std::move(job));
}

void InferenceEngine::CountFailure(const std::string& id, const CallControl& call) const {
  if (statistics_ != nullptr) statistics_->RecordRequest(id, false, absl::Now() - call.received);
}

}  // namespace lstmserve::server
