// lstmserve's C++ client: a typed API over the gRPC services, at::Tensor in and out.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/v1/inference_service.grpc.pb.h"
#include "lstmserve/v1/parameter_service.grpc.pb.h"

namespace lstmserve::client {

struct ClientOptions {
  std::string target = "localhost:50051";      // gRPC target, e.g. "dns:///lstmserve:50051"
  absl::Duration timeout = absl::Seconds(60);  // deadline of each call
  int64_t max_message_bytes = int64_t{64} << 20;
  // Spreads calls over every address the target resolves to (a headless Service's pods);
  // with one address it is the same as "pick_first".
  std::string lb_policy = "round_robin";
  // TLS (PEM text; LoadClientSecurity reads it from files). Off unless `tls` is set.
  bool tls = false;
  std::string tls_root_certs;   // CAs to trust; empty: the system's roots
  std::string tls_cert_chain;   // client certificate, for mutual TLS
  std::string tls_private_key;  // its key
  std::string tls_server_name;  // name to check the server's certificate against, if not the target's host
  // Sent as "authorization: Bearer <token>" with every call (empty: none).
  std::string bearer_token;
};

// Fills the TLS and token fields from files (the CLI's flags): `ca_file` turns TLS on;
// `cert_file` and `key_file` (both or neither) add a client certificate; `token_file`
// holds the token on its first line. INVALID_ARGUMENT naming an unreadable file.
absl::Status LoadClientSecurity(const std::string& ca_file, const std::string& cert_file, const std::string& key_file,
                                const std::string& token_file, ClientOptions* options);
// A channel with the options' target, message limits, balancing and credentials.
std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options);
// Adds what every call carries (the bearer token) to a context.
void PrepareContext(const ClientOptions& options, grpc::ClientContext* context);

// A stateful inference session (InferenceService.Session). Not thread-safe.
class Session {
 public:
  ~Session();
  // One step: x [B, I] -> the top layer's new h [B, H] (and, with return_state, `state`).
  absl::StatusOr<at::Tensor> Step(const at::Tensor& x, core::LstmState* state = nullptr);
  // Closes the stream and returns its final status.
  absl::Status Close();
  // The index the server gave the last step answered (SessionResponse.step): with a
  // sequence id, the sequence's steps before it.
  int64_t last_step() const { return last_step_; }
  // The stored sequence the session's steps are kept in (SessionResponse.sequence_id): the
  // one it named, or the one the server named; empty before the first step is answered. A
  // new session naming it resumes the sequence (Client::OpenSession's `sequence_id`).
  const std::string& sequence_id() const { return sequence_id_; }

 private:
  friend class Client;
  Session() = default;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;
  bool closed_ = false;
  int64_t last_step_ = -1;
  std::string sequence_id_;
};

// Thread-safe; one channel shared by every call.
class Client {
 public:
  static std::unique_ptr<Client> Connect(const ClientOptions& options);

  absl::StatusOr<v1::ParameterSet> Create(const v1::ParameterSetSpec& spec, const std::string& id = "");
  absl::StatusOr<v1::ParameterSet> Get(const std::string& id);
  // Every set, following pages of `page_size`.
  absl::StatusOr<std::vector<v1::ParameterSet>> List(int page_size = 100);
  absl::Status Delete(const std::string& id);
  // The set's tensors (CPU), streamed in chunks; `metadata` gets the set's metadata.
  absl::StatusOr<core::ParameterSet> Export(const std::string& id, v1::ParameterSet* metadata = nullptr);
  // Uploads tensors as a set; `checksum` (optional) is verified by the server. The header's
  // weight storage is `storage`, or when absent inferred from the dtypes
  // (core::InferWeightStorage: int8 or bfloat16-beside-float32 weights); an LSTM set of
  // bfloat16 weights without biases needs it given.
  absl::StatusOr<v1::ParameterSet> Import(const std::vector<core::NamedTensor>& tensors, const std::string& id = "",
                                          const std::string& checksum = "", int64_t chunk_bytes = int64_t{1} << 20,
                                          std::optional<core::WeightStorage> storage = std::nullopt);

  // Variance diagnostics of a stored set or an inline spec (ParameterService.AnalyzeParameterSet).
  absl::StatusOr<v1::AnalyzeParameterSetResponse> Analyze(const v1::AnalyzeParameterSetRequest& request);

  absl::StatusOr<core::LstmState> Step(const std::string& id, const at::Tensor& x, const core::LstmState& state = {});
  absl::StatusOr<core::SequenceResult> Run(const std::string& id, const at::Tensor& inputs,
                                           const core::LstmState& state = {}, bool final_state_only = false);
  // `sequence_id` (optional): the session's steps are that stored sequence's, resumed when
  // it is open (SessionStart.sequence_id).
  absl::StatusOr<std::unique_ptr<Session>> OpenSession(const std::string& id, int64_t batch_size,
                                                       const core::LstmState& state = {}, bool return_state = false,
                                                       const std::string& sequence_id = "");
  // A stored sequence's set, step count and (with include_state) state.
  absl::StatusOr<v1::GetSequenceResponse> GetSequence(const v1::GetSequenceRequest& request);

  // grpc.health.v1 status of the server: "SERVING", "NOT_SERVING", ...
  absl::StatusOr<std::string> Health();

 private:
  explicit Client(const ClientOptions& options);
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ParameterService::Stub> parameters_;
  std::unique_ptr<v1::InferenceService::Stub> inference_;
};

// Tensors of a file: .safetensors, or .pt (a dict of tensors from torch.save / Export).
// LibTorch 1.13's unpickler reads torch.save'd dicts of 2 or more tensors only (a
// one-entry dict uses the SETITEM opcode it lacks): INVALID_ARGUMENT saying so.
absl::StatusOr<std::vector<core::NamedTensor>> ReadTensorFile(const std::string& path);
// Writes tensors as .safetensors or .pt, by the path's suffix. A .pt is a state_dict as
// torch.save writes it: torch.load reads it with its defaults (weights_only included).
absl::Status WriteTensorFile(const std::string& path, const std::vector<core::NamedTensor>& tensors);

}  // namespace lstmserve::client
