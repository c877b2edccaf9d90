// The Open Inference Protocol (KServe v2) as lstmserve serves it, in protocol-neutral values:
// both its front ends (gRPC `inference.GRPCInferenceService` and HTTP/REST `/v2`) convert
// their messages to these and call OpenInference, so models, tensors, sequences and errors
// are the same on both.
//
// A model is a LSTM parameter set: its name is the set id, its one version "1". Inputs:
// INPUT [T, B, I], and optionally C0 and H0 [L, B, H] (both or neither; zeros when left
// out). Outputs: OUTPUT [T, B, H] (h of the last layer at every step), CN and HN [L, B, H]
// (the final state). Tensors are of the set's dtype: FP32, FP16 or BF16.
//
// Sequences (Triton's sequence extension): a request with a sequence id (uint64 or string)
// continues that sequence from the state its previous request left (or from C0/H0 when the
// request gives them); sequence_start begins it (from C0/H0 or zeros), sequence_end ends it
// after this request. The state stays in the SequenceStore (this server's memory, or a Redis
// every replica shares), under the same limit and idle timeout as v1 Sessions. With the
// request parameter sequence_step (the steps taken before it), a request is applied exactly
// once: its retry is answered again without advancing; responses carry sequence_step, the
// steps taken after them.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "lstmserve/server/engine/inference_engine.h"

namespace lstmserve::server::oip {

// A tensor as the protocol names it: data type "FP32", "FP16" or "BF16", shape, and its
// row-major little-endian bytes.
struct Tensor {
  std::string name;
  std::string datatype;
  std::vector<int64_t> shape;
  std::string data;
};

struct TensorMetadata {
  std::string name;
  std::string datatype;
  std::vector<int64_t> shape;  // -1: varies
  bool optional = false;
};

// What a model is, decided here once; each front end serializes it for its wire (metadata,
// and Triton's model configuration).
struct ModelMetadata {
  std::string name;
  std::vector<std::string> versions;
  std::string platform;
  std::string backend;
  int64_t max_batch_size = 0;  // 0: the shapes carry their batch dimension (B, the second)
  std::vector<TensorMetadata> inputs;
  std::vector<TensorMetadata> outputs;
  absl::Duration sequence_idle_timeout;  // a sequence idle this long is ended
};

struct InferRequest {
  std::string model;
  std::string version;
  std::string id;  // echoed
  std::vector<Tensor> inputs;
  std::vector<std::string> outputs;  // wanted; empty: all
  // Sequences: `sequence_key` is empty without a sequence id, else "u:<n>" or "s:<text>"
  // (SequenceKey).
  std::string sequence_key;
  bool sequence_start = false;
  bool sequence_end = false;
  // The steps the sequence has taken before this request (the `sequence_step` parameter):
  // applied exactly once (see SequenceStep).
  std::optional<uint64_t> sequence_step;
};

struct InferResponse {
  std::string model;
  std::string version;
  std::string id;
  std::vector<Tensor> outputs;
  std::optional<uint64_t> sequence_step;  // a sequence's steps after this request (parameter sequence_step)
};

// The longest string sequence id, in bytes: longer ones are refused (INVALID_ARGUMENT), so
// that ids cannot hold a server's memory (Triton's clients use ids of a few dozen bytes).
inline constexpr size_t kMaxSequenceIdBytes = 256;

// A sequence id's key in the SequenceStore: uint64 and string ids never meet. An id of 0 or
// "" is no sequence (the protocol's convention): the key is empty.
std::string SequenceKey(uint64_t id);
std::string SequenceKey(const std::string& id);
// A string id the client gave in `field`, as a key: INVALID_ARGUMENT past kMaxSequenceIdBytes.
absl::StatusOr<std::string> CheckedSequenceKey(const std::string& id, absl::string_view field);

// The protocol's extensions lstmserve supports (ServerMetadata's `extensions`).
std::vector<std::string> Extensions();

// The server's metadata (ServerMetadata, GET /v2).
struct ServerMetadata {
  std::string name;
  std::string version;
  std::vector<std::string> extensions;
};

// A set as the model-repository extension lists it (POST /v2/repository/index,
// RepositoryIndex): state "READY" when it is held in memory, "UNAVAILABLE" when it is only in
// the store, with a reason ("unloaded", or "not in memory: loads on first use").
struct RepositoryModel {
  std::string name;
  std::string version;
  std::string state;
  std::string reason;
};

// Thread-safe; borrows the engine.
class OpenInference {
 public:
  // While `*draining` (optional) is true, the server and its models are not ready.
  OpenInference(InferenceEngine* engine, absl::Duration sequence_idle_timeout,
                const std::atomic<bool>* draining = nullptr)
      : engine_(engine), sequence_idle_timeout_(sequence_idle_timeout), draining_(draining) {}

  ServerMetadata Server() const;
  // Ready to serve: false while draining. (Live is always true: the process answers.)
  bool ServerReady() const;

  // NOT_FOUND for an unknown model or a version other than "" and "1"; FAILED_PRECONDITION
  // for a set that is not a stacked LSTM.
  absl::StatusOr<ModelMetadata> Metadata(const std::string& model, const std::string& version) const;
  // Whether the server is ready and the model exists and can run (not an error when not).
  bool Ready(const std::string& model, const std::string& version) const;

  // Validates the request and queues it on the batcher; `done` is called once, perhaps
  // before Infer returns. INVALID_ARGUMENT names what is wrong (an unknown input or output,
  // a data type or shape that does not fit the model, a sequence not started, ...).
  void Infer(InferRequest request, const CallControl& call,
             std::function<void(absl::StatusOr<InferResponse>)> done) const;

  // The statistics extension: one model's figures (NOT_FOUND for an unknown model or
  // version), or, for an empty name, those of every set in the store.
  absl::StatusOr<std::vector<ModelStats>> Statistics(const std::string& model, const std::string& version) const;

  // The model-repository extension. `repository` must be "" (the server has one, its
  // store). Index: every set in the store, only the ones held in memory when `ready_only`.
  // Load holds a stored set in memory and serves it again after an unload; Unload drops it
  // from memory and refuses inference on it until Load; its file stays. Parameters are
  // named in `parameters`: Load takes none (INVALID_ARGUMENT: a set's file and config are
  // the store's), Unload takes only unload_dependents (a set has none).
  absl::StatusOr<std::vector<RepositoryModel>> RepositoryIndex(const std::string& repository, bool ready_only) const;
  absl::Status Load(const std::string& repository, const std::string& model,
                    const std::vector<std::string>& parameters) const;
  absl::Status Unload(const std::string& repository, const std::string& model,
                      const std::vector<std::string>& parameters) const;

 private:
  absl::StatusOr<std::shared_ptr<const SetEntry>> Model(const std::string& model, const std::string& version) const;

  InferenceEngine* const engine_;
  const absl::Duration sequence_idle_timeout_;
  const std::atomic<bool>* const draining_;
};

}  // namespace lstmserve::server::oip
