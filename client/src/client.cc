#include "lstmserve/client/client.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"

#include "lstmserve/core/status.h"
#include "lstmserve/core/store.h"
#include "lstmserve/wire/conversions.h"
#include "torch_save.h"

namespace lstmserve::client {
namespace {

constexpr int64_t kNoLimit = int64_t{1} << 62;

absl::StatusOr<at::Tensor> Decode(const v1::Tensor& t, absl::string_view field) {
  LSTMSERVE_ASSIGN_OR_RETURN(core::DType dtype, wire::DTypeFromProto(t.dtype(), field));
  return wire::TensorFromProto(t, field, dtype, kNoLimit, c10::Device(c10::kCPU));
}

template <typename Response>
absl::StatusOr<core::LstmState> DecodeState(const Response& response) {
  core::LstmState state;
  for (int i = 0; i < response.c_size(); ++i) {
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor c, Decode(response.c(i), absl::StrCat("c[", i, "]")));
    state.c.push_back(std::move(c));
  }
  for (int i = 0; i < response.h_size(); ++i) {
    LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor h, Decode(response.h(i), absl::StrCat("h[", i, "]")));
    state.h.push_back(std::move(h));
  }
  return state;
}

template <typename Request>
void EncodeState(const core::LstmState& state, Request* request) {
  for (const auto& c : state.c) wire::TensorToProto(c, request->add_c());
  for (const auto& h : state.h) wire::TensorToProto(h, request->add_h());
}

}  // namespace

Session::~Session() { (void)Close(); }

absl::StatusOr<at::Tensor> Session::Step(const at::Tensor& x, core::LstmState* state) {
  v1::SessionRequest request;
  wire::TensorToProto(x, request.mutable_x());
  v1::SessionResponse response;
  if (!stream_->Write(request) || !stream_->Read(&response)) {
    closed_ = true;
    stream_->WritesDone();
    return wire::FromGrpcStatus(stream_->Finish());
  }
  last_step_ = response.step();
  sequence_id_ = response.sequence_id();
  if (state != nullptr) {
    LSTMSERVE_ASSIGN_OR_RETURN(*state, DecodeState(response));
  }
  return Decode(response.output(), "output");
}

absl::Status Session::Close() {
  if (closed_ || !stream_) return absl::OkStatus();
  closed_ = true;
  stream_->WritesDone();
  return wire::FromGrpcStatus(stream_->Finish());
}

std::unique_ptr<Client> Client::Connect(const ClientOptions& options) {
  return std::unique_ptr<Client>(new Client(options));
}

namespace {

absl::StatusOr<std::string> ReadText(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", flag, " ", path));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

absl::Status LoadClientSecurity(const std::string& ca_file, const std::string& cert_file, const std::string& key_file,
                                const std::string& token_file, ClientOptions* options) {
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file go together");
  }
  if (!ca_file.empty()) {
    options->tls = true;
    LSTMSERVE_ASSIGN_OR_RETURN(options->tls_root_certs, ReadText(ca_file, "--tls_ca_file"));
  }
  if (!cert_file.empty()) {
    options->tls = true;
    LSTMSERVE_ASSIGN_OR_RETURN(options->tls_cert_chain, ReadText(cert_file, "--tls_cert_file"));
    LSTMSERVE_ASSIGN_OR_RETURN(options->tls_private_key, ReadText(key_file, "--tls_key_file"));
  }
  if (!token_file.empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(std::string text, ReadText(token_file, "--token_file"));
    options->bearer_token = std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
    if (options->bearer_token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--token_file ", token_file, " is empty"));
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  if (!options.lb_policy.empty()) args.SetLoadBalancingPolicyName(options.lb_policy);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_cert_chain;
    ssl.pem_private_key = options.tls_private_key;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

void PrepareContext(const ClientOptions& options, grpc::ClientContext* context) {
  if (!options.bearer_token.empty()) context->AddMetadata("authorization", "Bearer " + options.bearer_token);
}

Client::Client(const ClientOptions& options) : options_(options) {
  channel_ = MakeChannel(options);
  parameters_ = v1::ParameterService::NewStub(channel_);
  inference_ = v1::InferenceService::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  PrepareContext(options_, context.get());
  return context;
}

absl::StatusOr<v1::AnalyzeParameterSetResponse> Client::Analyze(const v1::AnalyzeParameterSetRequest& request) {
  v1::AnalyzeParameterSetResponse response;
  LSTMSERVE_RETURN_IF_ERROR(
      wire::FromGrpcStatus(parameters_->AnalyzeParameterSet(NewContext().get(), request, &response)));
  return response;
}

absl::StatusOr<v1::ParameterSet> Client::Create(const v1::ParameterSetSpec& spec, const std::string& id) {
  v1::CreateParameterSetRequest request;
  request.set_parameter_set_id(id);
  *request.mutable_spec() = spec;
  v1::CreateParameterSetResponse response;
  LSTMSERVE_RETURN_IF_ERROR(
      wire::FromGrpcStatus(parameters_->CreateParameterSet(NewContext().get(), request, &response)));
  return response.parameter_set();
}

absl::StatusOr<v1::ParameterSet> Client::Get(const std::string& id) {
  v1::GetParameterSetRequest request;
  request.set_parameter_set_id(id);
  v1::GetParameterSetResponse response;
  LSTMSERVE_RETURN_IF_ERROR(wire::FromGrpcStatus(parameters_->GetParameterSet(NewContext().get(), request, &response)));
  return response.parameter_set();
}

absl::StatusOr<std::vector<v1::ParameterSet>> Client::List(int page_size) {
  std::vector<v1::ParameterSet> out;
  v1::ListParameterSetsRequest request;
  request.set_page_size(page_size);
  while (true) {
    v1::ListParameterSetsResponse response;
    LSTMSERVE_RETURN_IF_ERROR(
        wire::FromGrpcStatus(parameters_->ListParameterSets(NewContext().get(), request, &response)));
    out.insert(out.end(), response.parameter_sets().begin(), response.parameter_sets().end());
    if (response.next_page_token().empty()) return out;
    request.set_page_token(response.next_page_token());
  }
}

absl::Status Client::Delete(const std::string& id) {
  v1::DeleteParameterSetRequest request;
  request.set_parameter_set_id(id);
  v1::DeleteParameterSetResponse response;
  return wire::FromGrpcStatus(parameters_->DeleteParameterSet(NewContext().get(), request, &response));
}

absl::StatusOr<core::ParameterSet> Client::Export(const std::string& id, v1::ParameterSet* metadata) {
  v1::ExportParameterSetRequest request;
  request.set_parameter_set_id(id);
  auto context = NewContext();
  auto reader = parameters_->ExportParameterSet(context.get(), request);
  v1::ExportParameterSetResponse message;
  v1::ParameterSet meta;
  core::ParameterSet set;
  std::vector<int64_t> filled;
  absl::Status problem;
  while (reader->Read(&message)) {
    if (message.has_parameter_set()) {
      meta = message.parameter_set();
      auto made = core::GuardTorch("export", [&]() -> absl::Status {
        for (const auto& info : meta.tensors()) {
          LSTMSERVE_ASSIGN_OR_RETURN(core::DType dtype, wire::DTypeFromProto(info.dtype(), "tensor"));
          if (dtype != core::DType::kInt8) set.dtype = dtype;
          set.tensors.push_back({info.name(), at::empty(std::vector<int64_t>(info.shape().begin(), info.shape().end()),
                                                        at::TensorOptions().dtype(core::ToScalarType(dtype)))});
          set.byte_size += static_cast<int64_t>(set.tensors.back().value.nbytes());
        }
        LSTMSERVE_ASSIGN_OR_RETURN(set.weight_storage,
                                   wire::WeightStorageFromProto(meta.weight_storage(), "parameter_set"));
        if (set.weight_storage != core::WeightStorage::kDType) set.dtype = core::DType::kFloat32;
        return absl::OkStatus();
      });
      if (!made.ok()) problem = made;
      filled.assign(set.tensors.size(), 0);
      continue;
    }
    const auto& chunk = message.chunk();
    const size_t i = static_cast<size_t>(chunk.tensor_index());
    if (i >= set.tensors.size() || chunk.offset() != filled[i] ||
        filled[i] + static_cast<int64_t>(chunk.data().size()) > static_cast<int64_t>(set.tensors[i].value.nbytes())) {
      problem = absl::DataLossError("export stream sent an out-of-order or oversized chunk");
      context->TryCancel();
      break;
    }
    std::memcpy(static_cast<char*>(set.tensors[i].value.data_ptr()) + filled[i], chunk.data().data(),
                chunk.data().size());
    filled[i] += static_cast<int64_t>(chunk.data().size());
  }
  const absl::Status status = wire::FromGrpcStatus(reader->Finish());
  if (!problem.ok()) return problem;
  LSTMSERVE_RETURN_IF_ERROR(status);
  for (size_t i = 0; i < set.tensors.size(); ++i) {
    if (filled[i] != static_cast<int64_t>(set.tensors[i].value.nbytes())) {
      return absl::DataLossError(absl::StrCat("export ended with tensor '", set.tensors[i].name, "' incomplete"));
    }
  }
  if (core::ComputeChecksum(set) != meta.checksum()) {
    return absl::DataLossError(
        absl::StrCat("exported data hashes to ", core::ComputeChecksum(set), ", not ", meta.checksum()));
  }
  if (metadata != nullptr) *metadata = meta;
  return set;
}

absl::StatusOr<v1::ParameterSet> Client::Import(const std::vector<core::NamedTensor>& tensors, const std::string& id,
                                                const std::string& checksum, int64_t chunk_bytes,
                                                std::optional<core::WeightStorage> storage) {
  auto context = NewContext();
  v1::ImportParameterSetResponse response;
  auto writer = parameters_->ImportParameterSet(context.get(), &response);
  v1::ImportParameterSetRequest header;
  header.mutable_header()->set_parameter_set_id(id);
  header.mutable_header()->set_checksum(checksum);
  header.mutable_header()->set_weight_storage(
      wire::WeightStorageToProto(storage.value_or(core::InferWeightStorage(tensors))));
  std::vector<at::Tensor> cpu;
  for (const auto& t : tensors) {
    cpu.push_back(t.value.contiguous().cpu());
    auto* info = header.mutable_header()->add_tensors();
    info->set_name(t.name);
    info->mutable_shape()->Assign(cpu.back().sizes().begin(), cpu.back().sizes().end());
    info->set_dtype(wire::DTypeToProto(core::FromScalarType(cpu.back().scalar_type()).value_or(core::DType::kFloat32)));
  }
  bool open = writer->Write(header);
  for (size_t i = 0; open && i < cpu.size(); ++i) {
    const int64_t total = static_cast<int64_t>(cpu[i].nbytes());
    for (int64_t offset = 0; open && offset < total; offset += chunk_bytes) {
      v1::ImportParameterSetRequest chunk;
      chunk.mutable_chunk()->set_tensor_index(static_cast<int32_t>(i));
      chunk.mutable_chunk()->set_offset(offset);
      chunk.mutable_chunk()->set_data(static_cast<const char*>(cpu[i].data_ptr()) + offset,
                                      std::min(chunk_bytes, total - offset));
      open = writer->Write(chunk);
    }
  }
  writer->WritesDone();
  LSTMSERVE_RETURN_IF_ERROR(wire::FromGrpcStatus(writer->Finish()));
  return response.parameter_set();
}

absl::StatusOr<core::LstmState> Client::Step(const std::string& id, const at::Tensor& x, const core::LstmState& state) {
  v1::StepRequest request;
  request.set_parameter_set_id(id);
  wire::TensorToProto(x, request.mutable_x());
  EncodeState(state, &request);
  v1::StepResponse response;
  LSTMSERVE_RETURN_IF_ERROR(wire::FromGrpcStatus(inference_->Step(NewContext().get(), request, &response)));
  return DecodeState(response);
}

absl::StatusOr<core::SequenceResult> Client::Run(const std::string& id, const at::Tensor& inputs,
                                                 const core::LstmState& state, bool final_state_only) {
  v1::RunRequest request;
  request.set_parameter_set_id(id);
  wire::TensorToProto(inputs, request.mutable_inputs());
  EncodeState(state, &request);
  request.set_final_state_only(final_state_only);
  v1::RunResponse response;
  LSTMSERVE_RETURN_IF_ERROR(wire::FromGrpcStatus(inference_->Run(NewContext().get(), request, &response)));
  core::SequenceResult result;
  if (response.has_outputs()) {
    LSTMSERVE_ASSIGN_OR_RETURN(result.outputs, Decode(response.outputs(), "outputs"));
  }
  LSTMSERVE_ASSIGN_OR_RETURN(result.final_state, DecodeState(response));
  return result;
}

absl::StatusOr<std::unique_ptr<Session>> Client::OpenSession(const std::string& id, int64_t batch_size,
                                                             const core::LstmState& state, bool return_state,
                                                             const std::string& sequence_id) {
  std::unique_ptr<Session> session(new Session());
  session->context_ = std::make_unique<grpc::ClientContext>();  // sessions have no deadline
  PrepareContext(options_, session->context_.get());
  session->stream_ = inference_->Session(session->context_.get());
  v1::SessionRequest start;
  start.mutable_start()->set_parameter_set_id(id);
  start.mutable_start()->set_batch_size(batch_size);
  start.mutable_start()->set_return_state(return_state);
  start.mutable_start()->set_sequence_id(sequence_id);
  EncodeState(state, start.mutable_start());
  if (!session->stream_->Write(start)) {
    session->closed_ = true;
    return wire::FromGrpcStatus(session->stream_->Finish());
  }
  return session;
}

absl::StatusOr<v1::GetSequenceResponse> Client::GetSequence(const v1::GetSequenceRequest& request) {
  v1::GetSequenceResponse response;
  LSTMSERVE_RETURN_IF_ERROR(wire::FromGrpcStatus(inference_->GetSequence(NewContext().get(), request, &response)));
  return response;
}

absl::StatusOr<std::string> Client::Health() {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  LSTMSERVE_RETURN_IF_ERROR(wire::FromGrpcStatus(stub->Check(NewContext().get(), request, &response)));
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

absl::StatusOr<std::vector<core::NamedTensor>> ReadTensorFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (absl::EndsWith(path, ".safetensors")) {
    LSTMSERVE_ASSIGN_OR_RETURN(core::StoredSet stored, core::DecodeSafetensors(bytes));
    return stored.set.tensors;
  }
  if (!absl::EndsWith(path, ".pt")) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a .safetensors or .pt file"));
  }
  auto read = core::GuardTorch(path, [&]() -> absl::StatusOr<std::vector<core::NamedTensor>> {
    const c10::IValue value = torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
    if (!value.isGenericDict()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a dict of tensors"));
    std::vector<core::NamedTensor> out;
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString() || !item.value().isTensor()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": not a dict of str -> tensor"));
      }
      out.push_back({item.key().toStringRef(), item.value().toTensor().contiguous()});
    }
    return out;
  });
  if (!read.ok() && absl::IsInternal(read.status())) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not readable as a dict of tensors (", read.status().message(),
                     "). LibTorch 1.13's unpickler reads torch.save'd dicts of 2 or more tensors only; "
                     "for a single tensor, save it as .safetensors"));  // 2.x reads both
  }
  return read;
}

absl::Status WriteTensorFile(const std::string& path, const std::vector<core::NamedTensor>& tensors) {
  std::string bytes;
  if (absl::EndsWith(path, ".safetensors")) {
    core::StoredSet stored;
    stored.id = "export";
    for (const auto& t : tensors) {
      stored.set.tensors.push_back(t);
      stored.set.byte_size += static_cast<int64_t>(t.value.nbytes());
    }
    stored.checksum = core::ComputeChecksum(stored.set);
    LSTMSERVE_ASSIGN_OR_RETURN(bytes, core::EncodeSafetensors(stored));
  } else if (absl::EndsWith(path, ".pt")) {
    // As torch.save(state_dict) writes it, so that torch.load reads it with its defaults.
    LSTMSERVE_ASSIGN_OR_RETURN(bytes, TorchSaveStateDict(tensors));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a .safetensors or .pt file name"));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace lstmserve::client
