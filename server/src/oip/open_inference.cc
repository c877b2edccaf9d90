#include "lstmserve/server/oip/open_inference.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "lstmserve/core/status.h"
#include "lstmserve/core/tensor_bytes.h"

namespace lstmserve::server::oip {
namespace {

constexpr const char* kInput = "INPUT";
constexpr const char* kC0 = "C0";
constexpr const char* kH0 = "H0";
constexpr const char* kOutput = "OUTPUT";
constexpr const char* kCn = "CN";
constexpr const char* kHn = "HN";

std::string DataTypeName(core::DType dtype) {
  switch (dtype) {
    case core::DType::kFloat32: return "FP32";
    case core::DType::kFloat16: return "FP16";
    case core::DType::kBFloat16: return "BF16";
    case core::DType::kInt8: return "INT8";
  }
  return "FP32";
}

Tensor ToTensor(const char* name, const at::Tensor& t) {
  Tensor out;
  out.name = name;
  out.datatype = DataTypeName(core::FromScalarType(t.scalar_type()).value_or(core::DType::kFloat32));
  out.shape.assign(t.sizes().begin(), t.sizes().end());
  out.data = core::TensorBytes(t);
  return out;
}

// The per-layer states [B, H] as one [L, B, H] tensor's bytes, copied once (no stacked
// tensor in between: this runs for every answer).
Tensor StackedToTensor(const char* name, const std::vector<at::Tensor>& layers) {
  Tensor out;
  out.name = name;
  out.datatype = DataTypeName(core::FromScalarType(layers[0].scalar_type()).value_or(core::DType::kFloat32));
  out.shape = {static_cast<int64_t>(layers.size())};
  out.shape.insert(out.shape.end(), layers[0].sizes().begin(), layers[0].sizes().end());
  out.data.reserve(layers.size() * layers[0].nbytes());
  for (const at::Tensor& layer : layers) out.data += core::TensorBytes(layer);
  return out;
}

// What a validated request runs: its set, inputs, initial state and wanted outputs.
struct Prepared {
  std::shared_ptr<const SetEntry> set;
  at::Tensor inputs;
  core::LstmState state;
  bool has_state = false;
  std::vector<std::string> outputs;
};

}  // namespace

std::string SequenceKey(uint64_t id) { return id == 0 ? std::string() : absl::StrCat("u:", id); }
std::string SequenceKey(const std::string& id) { return id.empty() ? std::string() : absl::StrCat("s:", id); }

absl::StatusOr<std::string> CheckedSequenceKey(const std::string& id, absl::string_view field) {
  if (id.size() > kMaxSequenceIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", id.size(), " bytes long; a sequence id takes at most ", kMaxSequenceIdBytes));
  }
  return SequenceKey(id);
}

std::vector<std::string> Extensions() {
  return {"model_configuration", "sequence",   "sequence(string_id)",
          "binary_tensor_data",  "statistics", "model_repository"};
}

absl::StatusOr<std::shared_ptr<const SetEntry>> OpenInference::Model(const std::string& model,
                                                                     const std::string& version) const {
  if (!version.empty() && version != "1") {
    return absl::NotFoundError(absl::StrCat("model '", core::ClientText(model), "' has no version '",
                                            core::ClientText(version), "'; its only version is 1 (or leave it empty)"));
  }
  if (model.empty()) return absl::InvalidArgumentError("the model name is empty; name a parameter set id");
  return engine_->LstmSet(model);
}

absl::StatusOr<ModelMetadata> OpenInference::Metadata(const std::string& model, const std::string& version) const {
  LSTMSERVE_ASSIGN_OR_RETURN(auto set, Model(model, version));
  const core::StackedLstm& lstm = *set->lstm;
  const std::string type = DataTypeName(set->stored.set.dtype);
  const int64_t L = lstm.num_layers(), I = lstm.input_size(), H = lstm.hidden_size();
  ModelMetadata m;
  m.name = model;
  m.versions = {"1"};
  m.platform = "lstmserve_lstm";
  m.backend = "lstmserve";
  m.max_batch_size = 0;
  m.inputs = {{kInput, type, {-1, -1, I}, false}, {kC0, type, {L, -1, H}, true}, {kH0, type, {L, -1, H}, true}};
  m.outputs = {{kOutput, type, {-1, -1, H}, false}, {kCn, type, {L, -1, H}, false}, {kHn, type, {L, -1, H}, false}};
  m.sequence_idle_timeout = sequence_idle_timeout_;
  return m;
}

ServerMetadata OpenInference::Server() const { return {"lstmserve", LSTMSERVE_VERSION, Extensions()}; }

bool OpenInference::ServerReady() const { return draining_ == nullptr || !draining_->load(); }

bool OpenInference::Ready(const std::string& model, const std::string& version) const {
  return ServerReady() && Model(model, version).ok();
}

absl::StatusOr<std::vector<ModelStats>> OpenInference::Statistics(const std::string& model,
                                                                  const std::string& version) const {
  std::vector<ModelStats> out;
  const ModelStatistics* statistics = engine_->statistics();
  const auto figures = [&](const std::string& id) {
    ModelStats stats = statistics != nullptr ? statistics->Get(id) : ModelStats{};
    stats.name = id;
    return stats;
  };
  if (model.empty()) {
    if (!version.empty()) return absl::InvalidArgumentError("a version needs a model name");
    for (const auto& set : engine_->registry().Index()) out.push_back(figures(set.id));
    return out;
  }
  if (!version.empty() && version != "1") {
    return absl::NotFoundError(absl::StrCat("model '", core::ClientText(model), "' has no version '",
                                            core::ClientText(version), "'; its only version is 1 (or leave it empty)"));
  }
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(model));
  if (!engine_->registry().Stored(model)) {
    return absl::NotFoundError(absl::StrCat("parameter set '", model, "' not found"));
  }
  out.push_back(figures(model));
  return out;
}

namespace {

absl::Status OneRepository(const std::string& repository) {
  if (repository.empty()) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("no repository '", core::ClientText(repository),
                                          "'; the server has one, its store: leave repository_name empty"));
}

}  // namespace

absl::StatusOr<std::vector<RepositoryModel>> OpenInference::RepositoryIndex(const std::string& repository,
                                                                            bool ready_only) const {
  LSTMSERVE_RETURN_IF_ERROR(OneRepository(repository));
  std::vector<RepositoryModel> out;
  for (const auto& set : engine_->registry().Index()) {
    if (ready_only && !set.held) continue;
    RepositoryModel m{set.id, "1", set.held ? "READY" : "UNAVAILABLE", ""};
    if (set.unloaded) {
      m.reason = "unloaded";
    } else if (!set.held) {
      m.reason = "not in memory: loads on first use";
    }
    out.push_back(std::move(m));
  }
  return out;
}

absl::Status OpenInference::Load(const std::string& repository, const std::string& model,
                                 const std::vector<std::string>& parameters) const {
  LSTMSERVE_RETURN_IF_ERROR(OneRepository(repository));
  if (!parameters.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("load takes no parameters (got '", core::ClientText(parameters[0]),
                                                   "'): a set's tensors and spec are its file in the store"));
  }
  if (model.empty()) return absl::InvalidArgumentError("the model name is empty; name a parameter set id");
  return engine_->registry().Load(model);
}

absl::Status OpenInference::Unload(const std::string& repository, const std::string& model,
                                   const std::vector<std::string>& parameters) const {
  LSTMSERVE_RETURN_IF_ERROR(OneRepository(repository));
  for (const std::string& name : parameters) {
    if (name != "unload_dependents") {
      return absl::InvalidArgumentError(
          absl::StrCat("unload takes only the parameter unload_dependents (got '", core::ClientText(name), "')"));
    }
  }
  if (model.empty()) return absl::InvalidArgumentError("the model name is empty; name a parameter set id");
  return engine_->registry().Unload(model);
}

void OpenInference::Infer(InferRequest request, const CallControl& call,
                          std::function<void(absl::StatusOr<InferResponse>)> done) const {
  const bool sequence = !request.sequence_key.empty();
  std::string known;  // the set, once found: a failure from then on is counted as the model's
  auto prepared = [&]() -> absl::StatusOr<Prepared> {
    Prepared p;
    if (request.sequence_key.size() > kMaxSequenceIdBytes + 2) {  // "s:" + the id
      return absl::InvalidArgumentError(absl::StrCat("sequence_id is ", request.sequence_key.size() - 2,
                                                     " bytes long; a string sequence id takes at most ",
                                                     kMaxSequenceIdBytes));
    }
    LSTMSERVE_ASSIGN_OR_RETURN(p.set, Model(request.model, request.version));
    known = p.set->stored.id;
    const core::StackedLstm& lstm = *p.set->lstm;
    const core::DType dtype = p.set->stored.set.dtype;
    const std::string type = DataTypeName(dtype);
    const std::string model = core::ClientText(request.model);
    at::Tensor c0, h0;
    for (Tensor& t : request.inputs) {
      at::Tensor* slot = t.name == kInput ? &p.inputs : t.name == kC0 ? &c0 : t.name == kH0 ? &h0 : nullptr;
      if (slot == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unexpected input '", core::ClientText(t.name), "' for model '", model, "'; its inputs are INPUT [T, B, ",
            lstm.input_size(), "] and, optionally, C0 and H0 [", lstm.num_layers(), ", B, ", lstm.hidden_size(), "]"));
      }
      if (slot->defined()) return absl::InvalidArgumentError(absl::StrCat("input ", t.name, " is given twice"));
      if (t.datatype != type) {
        return absl::InvalidArgumentError(absl::StrCat("input ", t.name, " has datatype ", core::ClientText(t.datatype),
                                                       "; model '", model, "' takes ", type));
      }
      LSTMSERVE_ASSIGN_OR_RETURN(*slot,
                                 core::TensorFromBytes(dtype, t.shape, t.data, t.name, engine_->max_tensor_elements()));
      if (slot->dim() != 3) {
        return absl::InvalidArgumentError(
            absl::StrCat("input ", t.name, " has shape [", absl::StrJoin(t.shape, ", "), "]; expected ",
                         slot == &p.inputs ? absl::StrCat("[T, B, ", lstm.input_size(), "]")
                                           : absl::StrCat("[", lstm.num_layers(), ", B, ", lstm.hidden_size(), "]")));
      }
      std::string().swap(t.data);  // decoded: the bytes are not needed any more
    }
    if (!p.inputs.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("input INPUT [T, B, ", lstm.input_size(), "] is missing"));
    }
    if (c0.defined() != h0.defined()) {
      return absl::InvalidArgumentError("give both C0 and H0 (the initial state), or neither for zeros");
    }
    if (c0.defined()) {
      const int64_t batch = p.inputs.size(1);
      for (const auto* t : {&c0, &h0}) {
        if (t->size(0) != lstm.num_layers() || t->size(1) != batch || t->size(2) != lstm.hidden_size()) {
          return absl::InvalidArgumentError(absl::StrCat(t == &c0 ? "C0" : "H0", " has shape [",
                                                         absl::StrJoin(t->sizes(), ", "), "]; expected [L, B, H] = [",
                                                         lstm.num_layers(), ", ", batch, ", ", lstm.hidden_size(),
                                                         "] (L layers of model '", model, "', B from INPUT)"));
        }
      }
      p.state.c = c0.unbind(0);
      p.state.h = h0.unbind(0);
      p.has_state = true;
    }
    for (const std::string& name : request.outputs) {
      if (name != kOutput && name != kCn && name != kHn) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected output '", core::ClientText(name), "'; the outputs are OUTPUT, CN and HN"));
      }
    }
    p.outputs = request.outputs.empty() ? std::vector<std::string>{kOutput, kCn, kHn} : request.outputs;
    if (!sequence && (request.sequence_start || request.sequence_end)) {
      return absl::InvalidArgumentError(
          "sequence_start and sequence_end need a sequence_id (a nonzero uint64 or a string)");
    }
    if (!sequence && request.sequence_step.has_value()) {
      return absl::InvalidArgumentError("sequence_step needs a sequence_id (a nonzero uint64 or a string)");
    }
    return p;
  }();
  if (!prepared.ok()) {
    if (!known.empty()) engine_->CountFailure(known, call);
    done(prepared.status());
    return;
  }
  const bool want_outputs =
      std::find(prepared->outputs.begin(), prepared->outputs.end(), kOutput) != prepared->outputs.end();
  InferResponse head;
  head.model = std::move(request.model);
  head.version = "1";
  head.id = std::move(request.id);
  // The response from a computed (or, for a retried sequence request, a recorded) result.
  auto respond = [head = std::move(head), outputs = std::move(prepared->outputs), done = std::move(done)](
                     absl::StatusOr<core::SequenceResult> result, std::optional<uint64_t> steps) mutable {
    if (!result.ok()) {
      done(result.status());
      return;
    }
    head.sequence_step = steps;
    absl::StatusOr<InferResponse> response = core::GuardTorch("the response", [&]() -> absl::StatusOr<InferResponse> {
      for (const std::string& name : outputs) {
        if (name == kOutput) head.outputs.push_back(ToTensor(kOutput, result->outputs));
        if (name == kCn) head.outputs.push_back(StackedToTensor(kCn, result->final_state.c));
        if (name == kHn) head.outputs.push_back(StackedToTensor(kHn, result->final_state.h));
      }
      return std::move(head);
    });
    done(std::move(response));
  };
  if (sequence) {
    SequenceStep step;
    step.key = std::move(request.sequence_key);
    step.shown = core::ClientText(step.key.substr(2));
    step.set = std::move(prepared->set);
    step.inputs = std::move(prepared->inputs);
    // C0/H0 given: they are the state, on any request (load generators send them with every
    // request); else the state the previous request left.
    if (prepared->has_state) step.state = std::move(prepared->state);
    step.start = request.sequence_start;
    step.end = request.sequence_end;
    step.expected_step = request.sequence_step;
    step.want_outputs = want_outputs;
    step.inputs_name = "INPUT";
    step.state_name = "C0 and H0";
    engine_->SubmitSequenceStep(call, std::move(step),
                                [respond = std::move(respond)](absl::StatusOr<SequenceAnswer> answer) mutable {
                                  if (!answer.ok()) {
                                    respond(answer.status(), std::nullopt);
                                    return;
                                  }
                                  respond(std::move(answer->result), answer->steps);
                                });
    return;
  }
  absl::StatusOr<BatchJob> job =
      engine_->MakeJob(call, prepared->set, std::move(prepared->inputs), std::move(prepared->state), want_outputs);
  if (!job.ok()) {
    engine_->CountFailure(known, call);
    respond(job.status(), std::nullopt);
    return;
  }
  job->done = [respond = std::move(respond)](absl::StatusOr<core::SequenceResult> result) mutable {
    respond(std::move(result), std::nullopt);
  };
  engine_->Submit(call, *std::move(job));
}

}  // namespace lstmserve::server::oip
