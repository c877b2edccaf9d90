// InferenceEngine::SubmitSequenceStep: one request of a stored sequence, applied exactly once.
//
// Load the record (this process's copy of what it committed last, when the store is shared:
// one write per step in the common case), decide (go on, answer a retry again, or refuse),
// compute on the batcher, then commit the new record under a compare-and-set of the version
// loaded. A commit that finds another version (another replica stepped the sequence, or the
// copy was stale) reloads and decides again: the request is then a retry (answered from the
// record), a mismatch (refused), or computed again from the newer state (without a
// sequence_step only), at most three times.
#include <memory>

#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/engine/inference_engine.h"

namespace lstmserve::server {
namespace {

constexpr int kMaxAttempts = 3;

void Digest(EVP_MD_CTX* ctx, const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  const std::string head = absl::StrCat(static_cast<int>(c.scalar_type()), "[", absl::StrJoin(c.sizes(), ","), "]");
  EVP_DigestUpdate(ctx, head.data(), head.size());
  EVP_DigestUpdate(ctx, c.data_ptr(), c.nbytes());
}

// What makes two requests the same request: inputs, a given state, flags.
std::string Fingerprint(const SequenceStep& step) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  const std::string flags = absl::StrCat(step.start, step.end, step.want_outputs, step.state.has_value());
  EVP_DigestUpdate(ctx, flags.data(), flags.size());
  Digest(ctx, step.inputs);
  if (step.state.has_value()) {
    for (const auto* part : {&step.state->c, &step.state->h}) {
      for (const auto& t : *part) Digest(ctx, t);
    }
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, md, &n);
  EVP_MD_CTX_free(ctx);
  return std::string(reinterpret_cast<const char*>(md), n);
}

// Why sequence `id` has no record, from its trace.
absl::Status NotOpen(absl::StatusCode code, const std::string& id, const std::string& trace_text,
                     absl::Duration idle_timeout) {
  const SequenceStore::Trace trace = SequenceStore::ReadTrace(trace_text);
  if (trace.ended) {
    return absl::Status(code, absl::StrCat("sequence ", id, " ended after ", trace.steps,
                                           " steps (sequence_end); start it again with sequence_start=true"));
  }
  if (!trace_text.empty()) {
    return absl::Status(code, absl::StrCat("sequence ", id, " expired: it was idle for more than ",
                                           absl::FormatDuration(idle_timeout), " (--sequence_idle_timeout) after ",
                                           trace.steps, " steps; start it again with sequence_start=true"));
  }
  return absl::Status(code, absl::StrCat("sequence ", id,
                                         " was never started (or it ended or expired over an hour ago): start it "
                                         "with sequence_start=true"));
}

// What to do with a request, given the record.
struct Plan {
  std::optional<SequenceAnswer> replay;  // answer this again
  core::LstmState state;                 // else: compute from this
  uint64_t steps_before = 0;
};

bool IsRetryOf(const SequenceRecord& r, uint64_t step, const std::string& fingerprint, const SetEntry& set) {
  return r.last_step == step && r.last_request == fingerprint && r.set_id == set.stored.id &&
         r.set_checksum == set.stored.checksum;
}

SequenceAnswer Replay(const SequenceRecord& r) {
  SequenceAnswer answer;
  answer.result.outputs = r.last_outputs;
  answer.result.final_state = r.state;
  answer.steps = r.steps;
  answer.replayed = true;
  return answer;
}

absl::StatusOr<Plan> Decide(const SequenceStep& step, const std::string& fingerprint,
                            const SequenceStore::Loaded& loaded, absl::Duration idle_timeout) {
  const std::string& id = step.shown;
  const SetEntry& set = *step.set;
  Plan plan;
  if (step.start && step.expected_step.value_or(0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("sequence_step is ", *step.expected_step, " on the request that ",
                                                   "starts sequence ", id, "; a start's sequence_step is 0"));
  }
  if (!loaded.record.has_value()) {
    if (!step.start) {
      const SequenceStore::Trace trace = SequenceStore::ReadTrace(loaded.trace);
      if (trace.ended && trace.final_record && step.expected_step &&
          IsRetryOf(*trace.final_record, *step.expected_step, fingerprint, set)) {
        plan.replay = Replay(*trace.final_record);
        return plan;
      }
      return NotOpen(absl::StatusCode::kFailedPrecondition, id, loaded.trace, idle_timeout);
    }
    plan.state = step.state.value_or(core::LstmState());
    return plan;
  }
  const SequenceRecord& r = *loaded.record;
  if (step.start) {
    if (step.expected_step.has_value() && IsRetryOf(r, 0, fingerprint, set)) {
      plan.replay = Replay(r);  // the start was applied; its answer was lost
      return plan;
    }
    plan.state = step.state.value_or(core::LstmState());
    return plan;
  }
  if (r.set_id != set.stored.id) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", id, " runs on model '", core::ClientText(r.set_id),
                                                   "', not '", core::ClientText(set.stored.id),
                                                   "'; a sequence keeps one model"));
  }
  if (r.set_checksum != set.stored.checksum) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", core::ClientText(set.stored.id), "' was deleted and re-created since sequence ", id,
                     " started (its weights are not the ones the sequence's state came from); start the sequence "
                     "again with sequence_start=true"));
  }
  if (step.expected_step.has_value() && *step.expected_step != r.steps) {
    if (IsRetryOf(r, *step.expected_step, fingerprint, set)) {
      plan.replay = Replay(r);
      return plan;
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", id, " has taken ", r.steps, " steps, and this request's sequence_step is ", *step.expected_step,
        *step.expected_step < r.steps
            ? " (an earlier step, and not a retry of the last request: it is not applied again)"
            : " (steps are missing in between)"));
  }
  if (step.state.has_value()) {
    plan.state = *step.state;
  } else {
    const int64_t batch = step.inputs.size(1);
    if (!r.state.c.empty() && r.state.c.front().size(0) != batch) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", id,
                                                     " runs with batch size B = ", r.state.c.front().size(0),
                                                     "; this request's ", step.inputs_name, " has B = ", batch,
                                                     ": keep B for the whole sequence, or start a "
                                                     "new one (sequence_start) or give ",
                                                     step.state_name));
    }
    plan.state = r.state;
  }
  plan.steps_before = r.steps;
  return plan;
}

// A request in progress: it holds the sequence's claim in this process until done.
struct StepRun {
  const InferenceEngine* engine;
  CallControl call;
  SequenceStep step;
  std::string fingerprint;
  std::function<void(absl::StatusOr<SequenceAnswer>)> done;

  void Finish(absl::StatusOr<SequenceAnswer> answer) {
    engine->sequences().Unclaim(step.key);
    if (answer.ok() && !answer->replayed) engine->sequences().StepDone();
    auto reply = std::move(done);
    reply(std::move(answer));
  }
};

void Commit(const std::shared_ptr<StepRun>& run, int attempt, const std::string& version, uint64_t before,
            core::SequenceResult result);

// `committed_from`: after a commit that found another version, the steps this request was
// committed from: a write of its own that landed (its reply lost) shows as a retry of it.
void Attempt(const std::shared_ptr<StepRun>& run, int attempt, bool trust_copy,
             std::optional<uint64_t> committed_from = std::nullopt) {
  SequenceStore& store = run->engine->sequences();
  absl::StatusOr<SequenceStore::Loaded> loaded = store.Load(run->step.key, trust_copy);
  if (!loaded.ok()) {
    run->Finish(loaded.status());
    return;
  }
  if (committed_from.has_value()) {
    const SequenceStore::Trace trace = SequenceStore::ReadTrace(loaded->trace);
    const SequenceRecord* own = loaded->record ? &*loaded->record : trace.final_record ? &*trace.final_record : nullptr;
    if (own != nullptr && IsRetryOf(*own, *committed_from, run->fingerprint, *run->step.set)) {
      run->Finish(Replay(*own));
      return;
    }
  }
  absl::StatusOr<Plan> plan = Decide(run->step, run->fingerprint, *loaded, store.idle_timeout());
  if (loaded->from_copy && (!plan.ok() || plan->replay.has_value())) {
    // Only a step computed from the copy is checked (by the commit's compare-and-set): a
    // refusal or a replay must come from the store's own record.
    Attempt(run, attempt, /*trust_copy=*/false, committed_from);
    return;
  }
  if (!plan.ok()) {
    run->Finish(plan.status());
    return;
  }
  if (plan->replay.has_value()) {
    run->Finish(*std::move(plan->replay));
    return;
  }
  absl::StatusOr<BatchJob> job =
      run->engine->MakeJob(run->call, run->step.set, run->step.inputs, std::move(plan->state), run->step.want_outputs);
  if (!job.ok()) {
    run->Finish(job.status());
    return;
  }
  job->done = [run, attempt, version = loaded->version,
               before = plan->steps_before](absl::StatusOr<core::SequenceResult> result) {
    if (!result.ok()) {
      run->Finish(result.status());
      return;
    }
    run->engine->sequences().RunCommit([run, attempt, version, before, result = *std::move(result)]() mutable {
      Commit(run, attempt, version, before, std::move(result));
    });
  };
  run->engine->batcher().Submit(*std::move(job));  // counted once, when the step is answered
}

// Writes the step's new record and answers (or, on another version, decides again).
void Commit(const std::shared_ptr<StepRun>& run, int attempt, const std::string& version, uint64_t before,
            core::SequenceResult result) {
  const SequenceStep& step = run->step;
  SequenceRecord record;
  record.set_id = step.set->stored.id;
  record.set_checksum = step.set->stored.checksum;
  record.steps = before + static_cast<uint64_t>(step.inputs.size(0));
  record.state = result.final_state;
  record.last_step = before;
  record.last_request = run->fingerprint;
  if (step.want_outputs) record.last_outputs = result.outputs;
  absl::StatusOr<std::optional<std::string>> committed =
      run->engine->sequences().Commit(step.key, version, record, step.end);
  if (!committed.ok()) {
    run->Finish(committed.status());
    return;
  }
  if (!committed->has_value()) {  // another version is there now
    if (attempt + 1 >= kMaxAttempts) {
      run->Finish(absl::AbortedError(absl::StrCat("sequence ", step.shown,
                                                  " was advanced by other requests while this one was computed (",
                                                  kMaxAttempts, " times); retry it with its sequence_step")));
      return;
    }
    Attempt(run, attempt + 1, /*trust_copy=*/false, before);
    return;
  }
  SequenceAnswer answer;
  answer.result = std::move(result);
  answer.steps = record.steps;
  run->Finish(std::move(answer));
}

}  // namespace

absl::StatusOr<SequenceRecord> InferenceEngine::GetSequence(const std::string& key, const std::string& shown) const {
  LSTMSERVE_ASSIGN_OR_RETURN(SequenceStore::Loaded loaded, sequences_->Load(key, /*trust_copy=*/false));
  if (!loaded.record.has_value()) {
    return NotOpen(absl::StatusCode::kNotFound, shown, loaded.trace, sequences_->idle_timeout());
  }
  return *std::move(loaded.record);
}

absl::Status InferenceEngine::EndSequence(const std::string& key, const std::string& shown) const {
  LSTMSERVE_RETURN_IF_ERROR(sequences_->Claim(key, shown));
  absl::Status status;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    absl::StatusOr<SequenceStore::Loaded> loaded = sequences_->Load(key, /*trust_copy=*/attempt == 0);
    if (!loaded.ok() || !loaded->record.has_value()) {
      status = loaded.status();
      break;
    }
    absl::StatusOr<std::optional<std::string>> ended =
        sequences_->Commit(key, loaded->version, *loaded->record, /*end=*/true);
    status = ended.status();
    if (!ended.ok() || ended->has_value()) break;
    status = absl::AbortedError(absl::StrCat("sequence ", shown, " kept being advanced while it was ended"));
  }
  sequences_->Unclaim(key);
  return status;
}

void InferenceEngine::SubmitSequenceStep(const CallControl& call, SequenceStep step,
                                         std::function<void(absl::StatusOr<SequenceAnswer>)> done) const {
  done = Counted(step.set->stored.id, call, std::move(done));
  if (absl::Status claimed = sequences_->Claim(step.key, step.shown); !claimed.ok()) {
    done(claimed);
    return;
  }
  auto run = std::make_shared<StepRun>();
  run->engine = this;
  run->call = call;
  absl::StatusOr<std::string> fingerprint =
      core::GuardTorch("the sequence request", [&]() -> absl::StatusOr<std::string> { return Fingerprint(step); });
  run->step = std::move(step);
  run->done = std::move(done);
  if (!fingerprint.ok()) {
    run->Finish(fingerprint.status());
    return;
  }
  run->fingerprint = *std::move(fingerprint);
  Attempt(run, 0, /*trust_copy=*/true);
}

}  // namespace lstmserve::server
