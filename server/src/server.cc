#include "lstmserve/server/server.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "lstmserve/core/blas.h"
#include "lstmserve/core/device.h"
#include "lstmserve/core/isa.h"
#include "lstmserve/core/status.h"
#include "lstmserve/core/threads.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/security.h"

namespace lstmserve::server {
namespace {

// Linking grpc++_reflection registers its plugin from a static initializer, whatever the
// flag says; this option takes it out again for --noreflection.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const auto& p) { return p->name() == kReflectionPluginName; }),
                   plugins->end());
  }

 private:
  static constexpr const char* kReflectionPluginName = "proto_server_reflection";
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  LSTMSERVE_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<Server> server(new Server());
  server->options_ = options;
  LSTMSERVE_ASSIGN_OR_RETURN(c10::Device device, core::ResolveDevice(options.device));
  const int threads = core::SetIntraOpThreads(options.intra_op_threads);
  const int batch_threads = options.num_batch_threads > 0 ? options.num_batch_threads : device.is_cuda() ? 2 : 1;
  LogInfo(absl::StrCat("lstmserve starting: device=", core::DeviceName(device), " threads=", threads,
                       " batch_threads=", batch_threads, (options.model_dir.empty() ? " store_dir=" : " model_dir="),
                       options.model_dir.empty() ? options.store_dir : options.model_dir, " transport=",
                       options.tls_cert_file.empty()        ? "plaintext"
                       : options.tls_client_ca_file.empty() ? "tls"
                                                            : "mutual-tls",
                       " auth=", options.auth_tokens_file.empty() ? "none" : "bearer-token"));
  TlsFiles tls;
  tls.cert_file = options.tls_cert_file;
  tls.key_file = options.tls_key_file;
  tls.client_ca_file = options.tls_client_ca_file;
  LSTMSERVE_RETURN_IF_ERROR(server->LoadStore(device));
  LSTMSERVE_RETURN_IF_ERROR(server->StartEngine(batch_threads));
  LSTMSERVE_RETURN_IF_ERROR(server->StartMetrics());
  LSTMSERVE_RETURN_IF_ERROR(server->StartGrpc(tls));
  if (!options.http_listen.empty()) {
    HttpLimits limits;
    limits.max_body_bytes = options.max_message_bytes;
    limits.idle_timeout = options.http_idle_timeout;
    limits.header_timeout = options.http_header_timeout;
    limits.max_connections = options.http_max_connections;
    LSTMSERVE_ASSIGN_OR_RETURN(server->http_, HttpService::Start(options.http_listen, options.http_threads, limits, tls,
                                                                 server->context_.get()));
    server->http_address_ = server->http_->address();
  }
  server->server_->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

absl::Status Server::LoadStore(const c10::Device& device) {
  BuildInfo build;
  build.version = LSTMSERVE_VERSION;
  build.libtorch_version = core::LibTorchVersion();
  build.device = core::DeviceName(device);
  const core::BlasInfo blas = core::DescribeBlas();
  build.blas = blas.library;
  build.blas_core = blas.core;
  build.isa = core::IsaLevelName(core::KernelIsa());
  metrics_ = std::make_unique<Metrics>(build);

  const absl::Time load_start = absl::Now();
  const bool model_dir = !options_.model_dir.empty();
  LSTMSERVE_ASSIGN_OR_RETURN(auto store, model_dir ? core::ParameterStore::OpenModelDir(options_.model_dir)
                                                   : core::ParameterStore::Open(options_.store_dir));
  registry_ = std::make_unique<SetRegistry>(std::move(store), device, options_.max_total_set_bytes, metrics_.get());
  const std::vector<std::string> problems = registry_->LoadAll();
  for (const auto& problem : problems) LogError(absl::StrCat(model_dir ? "model_dir: " : "store: skipped ", problem));
  if (model_dir) {
    // What a KServe runtime serves is fixed: a file that does not check out is an error to
    // see at once (the pod does not become ready), not a model quietly missing.
    for (const auto& problem : problems) {
      if (!absl::StrContains(problem, "load on first use")) {
        return absl::DataLossError(absl::StrCat("--model_dir ", options_.model_dir, ": ", problem));
      }
    }
  }
  const absl::Duration load_time = absl::Now() - load_start;
  metrics_->SetStoreLoadTime(load_time);
  LogInfo(absl::StrCat("store loaded: ", registry_->count(), " sets, ", registry_->total_bytes(), " bytes in ",
                       absl::FormatDuration(load_time)));
  return absl::OkStatus();
}

absl::Status Server::StartEngine(int batch_threads) {
  const ServerOptions& options = options_;
  compute_ = std::make_unique<ComputePool>(1);
  BatchOptions batching;
  batching.enabled = options.enable_batching;
  batching.num_batch_threads = batch_threads;
  batching.max_batch_size = options.max_batch_size;
  batching.batch_timeout = absl::Microseconds(options.batch_timeout_micros);
  batching.inline_max_work = options.inline_max_work;
  batching.path = *core::ParseLstmPath(options.lstm_path);  // validated with the options
  batching.max_queued_requests = options.max_queued_requests;
  LogInfo(absl::StrCat("lstm kernels: ", core::DescribeCpuKernels(), "; path ", options.lstm_path));
  statistics_ = std::make_unique<ModelStatistics>();
  batcher_ = std::make_unique<Batcher>(batching, metrics_.get(), nullptr, statistics_.get());
  std::unique_ptr<SequenceBackend> backend;
  if (options.sequence_store == "memory") {
    backend = NewMemorySequenceBackend();
  } else {
    RedisOptions redis;
    redis.url = options.sequence_store;
    redis.timeout = options.sequence_store_timeout;
    redis.tls = {options.sequence_store_ca_file, options.sequence_store_cert_file, options.sequence_store_key_file};
    if (!options.sequence_store_password_file.empty()) {
      LSTMSERVE_ASSIGN_OR_RETURN(
          redis.password, ReadSecretFile(options.sequence_store_password_file, "--sequence_store_password_file"));
    }
    LSTMSERVE_ASSIGN_OR_RETURN(backend, NewRedisSequenceBackend(redis));
    // Reached at start when it can be (a store that is down is not fatal: sequence requests
    // get UNAVAILABLE until it is back, and everything else is served).
    if (absl::StatusOr<int64_t> open = backend->Count(); open.ok()) {
      LogInfo(absl::StrCat("sequence store ", backend->Describe(), ": ", *open, " sequences open"));
    } else {
      LogError(absl::StrCat("sequence store not reached at start (sequence requests get UNAVAILABLE until it is): ",
                            open.status().message()));
    }
  }
  sequences_ =
      std::make_unique<SequenceStore>(std::move(backend), options.max_sequences, options.sequence_idle_timeout);
  engine_ = std::make_unique<InferenceEngine>(registry_.get(), batcher_.get(), sequences_.get(),
                                              options.max_tensor_elements, statistics_.get());
  context_ = std::make_unique<ServiceContext>();
  oip_ = std::make_unique<oip::OpenInference>(engine_.get(), options.sequence_idle_timeout, &context_->draining);
  context_->registry = registry_.get();
  context_->compute = compute_.get();
  context_->engine = engine_.get();
  context_->oip = oip_.get();
  context_->metrics = metrics_.get();
  if (!options.auth_tokens_file.empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(auth_, TokenAuthenticator::FromFile(options.auth_tokens_file));
    context_->auth = auth_.get();
  }
  context_->options = options;
  context_->create_limits.max_set_bytes = options.max_set_bytes;
  context_->create_limits.max_tensors = options.max_tensors_per_set;
  return absl::OkStatus();
}

absl::Status Server::StartMetrics() {
  metrics_->SetSnapshotSource([this] {
    MetricsSnapshot snapshot;
    const BatchStats batch = batcher_->stats();
    snapshot.queue_depth = batch.queued;
    snapshot.queue_capacity = options_.max_queued_requests;
    snapshot.rejected_queue_full = batch.rejected;
    snapshot.expired_deadline = batch.expired;
    snapshot.expired_cancelled = batch.cancelled;
    const SequenceStore::Stats sessions = sequences_->stats();
    snapshot.sessions_active = sessions.active;
    snapshot.session_steps = sessions.steps;
    snapshot.sessions_rejected = sessions.rejected;
    snapshot.sessions_idle_cancelled = sessions.idle_cancelled;
    const SequenceStore::BackendStats store = sequences_->backend_stats();
    snapshot.sequence_loads = store.loads;
    snapshot.sequence_load_errors = store.load_errors;
    snapshot.sequence_commits = store.commits;
    snapshot.sequence_commit_errors = store.commit_errors;
    snapshot.sequence_conflicts = store.conflicts;
    snapshot.sequence_copies_used = store.copies_used;
    snapshot.sequence_load_seconds = store.load_seconds;
    snapshot.sequence_commit_seconds = store.commit_seconds;
    snapshot.sequence_store = sequences_->backend().Describe();
    snapshot.parameter_sets = registry_->count();
    snapshot.parameter_set_bytes = registry_->total_bytes();
    snapshot.parameter_set_derived_bytes = registry_->derived_bytes();
    if (auto memory = core::DeviceMemoryStats(registry_->device())) {
      snapshot.device_memory_allocated_bytes = memory->allocated_bytes;
      snapshot.device_memory_reserved_bytes = memory->reserved_bytes;
    }
    return snapshot;
  });
  if (!options_.metrics_listen.empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(metrics_address_, metrics_->Serve(options_.metrics_listen));
  }
  return absl::OkStatus();
}

absl::Status Server::StartGrpc(const TlsFiles& tls) {
  LSTMSERVE_ASSIGN_OR_RETURN(auto credentials, MakeServerCredentials(tls));
  parameter_service_ = std::make_unique<ParameterServiceImpl>(context_.get());
  inference_service_ = std::make_unique<InferenceServiceImpl>(context_.get());
  oip_grpc_service_ = std::make_unique<OipGrpcService>(context_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(metrics_->MakeInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  if (options_.reflection) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  } else {
    builder.SetOption(std::make_unique<WithoutReflection>());
  }
  int port = 0;
  builder.AddListeningPort(options_.listen, credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.RegisterService(parameter_service_.get());
  builder.RegisterService(inference_service_.get());
  builder.RegisterService(oip_grpc_service_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen, " (in use, or not a local address?)"));
  }
  std::string host;
  int unused = 0;
  (void)ParseHostPort(options_.listen, &host, &unused);
  address_ = absl::StrCat(host, ":", port);
  return absl::OkStatus();
}

Server::~Server() {
  if (metrics_) metrics_->StopServing();
  if (http_) http_->Stop();
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
}

void Server::Drain() {
  LogInfo(absl::StrCat("draining: health NOT_SERVING, refusing new calls, up to ",
                       absl::FormatDuration(options_.drain_timeout), " for calls in flight"));
  server_->GetHealthCheckService()->SetServingStatus(false);
  context_->draining = true;
  const absl::Time began = absl::Now();
  if (http_) http_->Stop(options_.drain_timeout);  // answers what it has received first
  const absl::Time http_done = absl::Now();
  // Session streams end at their next step boundary (their sequences stay in the store).
  sequences_->DrainStreams();
  // Shutdown refuses new RPCs at once and lets every call already received finish until
  // the deadline, after which the rest are cancelled.
  const auto deadline = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options_.drain_timeout);
  server_->Shutdown(deadline);
  server_->Wait();
  server_.reset();
  LogInfo(absl::StrCat("drained: HTTP in ", absl::FormatDuration(http_done - began), ", gRPC in ",
                       absl::FormatDuration(absl::Now() - http_done)));
  const BatchStats stats = batcher_->stats();
  const SequenceStore::Stats sessions = sequences_->stats();
  LogInfo(absl::StrCat("stopped; inference: ", stats.requests, " requests in ", stats.batches, " batches (",
                       stats.batches > 0 ? stats.rows / stats.batches : 0, " rows on average, largest ", stats.max_rows,
                       "; ", stats.inlined, " computed on the receiving thread), ", stats.rejected,
                       " rejected (queue full), ", stats.expired, " expired and ", stats.cancelled,
                       " cancelled in the queue; ", sessions.steps, " session steps, ", sessions.idle_cancelled,
                       " idle sessions cancelled"));
}

}  // namespace lstmserve::server
