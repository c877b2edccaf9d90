// lstmserve-cli: a command-line client for lstmserve. See --help.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

#include "analyze.h"
#include "bench.h"
#include "lstmserve/client/client.h"
#include "lstmserve/core/command_line.h"
#include "lstmserve/core/device.h"
#include "lstmserve/core/status.h"
#include "lstmserve/wire/conversions.h"

ABSL_FLAG(std::string, target, "localhost:50051", "server address (gRPC target)");
ABSL_FLAG(bool, json, false, "print JSON instead of readable text");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(60), "deadline of each call");
ABSL_FLAG(std::string, tls_ca_file, "", "TLS: trust server certificates signed by this CA (PEM); turns TLS on");
ABSL_FLAG(std::string, tls_cert_file, "", "mutual TLS: this client's certificate (PEM), with --tls_key_file");
ABSL_FLAG(std::string, tls_key_file, "", "mutual TLS: this client's private key (PEM)");
ABSL_FLAG(std::string, tls_server_name, "", "TLS: the name to check the server's certificate against");
ABSL_FLAG(std::string, token_file, "", "a file whose first line is the bearer token to send");
ABSL_FLAG(std::string, id, "", "parameter set id (create/import: empty lets the server choose)");
ABSL_FLAG(std::string, spec, "", "create: a ParameterSetSpec as JSON (overrides the template flags)");
ABSL_FLAG(int64_t, layers, 2, "create: LSTM template layers");
ABSL_FLAG(int64_t, input_size, 64, "create: LSTM template input size");
ABSL_FLAG(int64_t, hidden_size, 64, "create: LSTM template hidden size");
ABSL_FLAG(bool, bias, false, "create: give each layer a bias");
ABSL_FLAG(uint64_t, seed, 0, "create: seed of the set");
ABSL_FLAG(std::string, fan_convention, "torch", "create: torch | matmul");
ABSL_FLAG(std::string, weight_storage, "",
          "create/import: how the LSTM weights are stored: empty (create: in the set's dtype; import: inferred "
          "from the dtypes), bfloat16, or int8 (with a float32 scale per column); inputs, states and math stay "
          "float32");
ABSL_FLAG(std::string, weight_init, "",
          "create/analyze: the weights' initializer: a short name (kaiming_normal, xavier_uniform:GAIN, "
          "normal:STD, uniform:A:B, orthogonal, ...) or an Initializer as JSON, e.g. '{\"xavierUniform\":{}}'");
ABSL_FLAG(int64_t, chain_layers, 0,
          "create/analyze: a chain of this many [--width, --width] weights instead of an LSTM");
ABSL_FLAG(int64_t, width, 256, "create/analyze: the chain's width");
ABSL_FLAG(std::string, activation, "relu", "analyze: the chain's activation: relu, leaky_relu, tanh, sigmoid, linear");
ABSL_FLAG(uint64_t, probe_seed, 0, "analyze: seed of the N(0, 1) probe inputs");
ABSL_FLAG(int64_t, samples, 0, "analyze: rows of the probe batch (0: the server's 256)");
ABSL_FLAG(int64_t, analyze_steps, 0, "analyze: LSTM steps (0: the server's 20)");
ABSL_FLAG(bool, weight_storage_error, false,
          "analyze: also measure the output error of bfloat16 and int8 weight storage against float32 (LSTM sets)");
ABSL_FLAG(std::string, compare, "",
          "analyze: comma-separated initializers to compare on the same architecture, e.g. "
          "kaiming_normal,xavier_uniform,normal:1");
ABSL_FLAG(std::string, plot, "", "analyze: write the per-layer variance, log scale, to this SVG file");
ABSL_FLAG(bool, plot_gradients, true, "analyze: for chains, also plot the gradient variance (dashed)");
ABSL_FLAG(std::string, out, "", "export/step/run: write tensors to this .safetensors or .pt file");
ABSL_FLAG(std::string, in, "", "import: read tensors from this .safetensors or .pt file");
ABSL_FLAG(std::string, input, "", "step/run: read the input (tensor 'x' or 'inputs', else the first) from a file");
ABSL_FLAG(int64_t, batch, 1, "step/run: batch size of random N(0,1) inputs when --input is not given");
ABSL_FLAG(int64_t, steps, 10, "run: steps of random inputs when --input is not given");
ABSL_FLAG(uint64_t, input_seed, 1, "step/run: seed of the random inputs");
ABSL_FLAG(bool, final_state_only, false, "run: return only the final states");
ABSL_FLAG(std::string, rpc, "step",
          "bench: step | run | session | infer (the Open Inference Protocol's ModelInfer of one step, "
          "INPUT [1, B, I]: step's work; also against another server of the protocol, whose model --id "
          "takes --input_size)");
ABSL_FLAG(int, concurrency, 1, "bench: callers, each with one call in flight");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "bench: measured time, after the warm-up");
ABSL_FLAG(int64_t, requests, 0, "bench: stop after this many measured requests (0: by --duration)");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1), "bench: unmeasured time first");
ABSL_FLAG(std::string, sequence_id, "",
          "sequence: a stored sequence's string id (the Open Inference Protocol's string sequence_id)");
ABSL_FLAG(uint64_t, sequence_uint64, 0, "sequence: a stored sequence's uint64 id (instead of --sequence_id)");
ABSL_FLAG(bool, state, false, "sequence: print its state (c and h per layer) too");
ABSL_FLAG(double, rate, 0, "bench: total requests per second, open loop (0: closed loop)");
ABSL_FLAG(std::string, client_api, "callback",
          "bench: the closed loop's gRPC API: callback (all callers on gRPC's threads, like ghz) or sync (a thread "
          "per caller blocked in its call, the common client)");

namespace {

namespace core = lstmserve::core;
namespace v1 = lstmserve::v1;
using lstmserve::client::Client;

constexpr char kUsage[] =
    "lstmserve-cli: talks to an lstmserve server.\n"
    "Usage: lstmserve-cli [--target=HOST:PORT] [--json] COMMAND [flags]\n"
    "Commands:\n"
    "  health                          the server's grpc.health.v1 status\n"
    "  create [--id] [--layers --input_size --hidden_size --bias --seed --fan_convention --weight_init\n"
    "          --weight_storage | --spec JSON]\n"
    "  get --id ID                     a set's metadata\n"
    "  list                            every set\n"
    "  delete --id ID\n"
    "  export --id ID --out FILE       the set's tensors to .safetensors or .pt\n"
    "  import --in FILE [--id ID]      upload tensors (a trained set) from .safetensors or .pt\n"
    "  step --id ID [--input FILE | --batch B --input_seed S] [--out FILE]\n"
    "  run --id ID [--input FILE | --batch B --steps T --input_seed S] [--final_state_only] [--out FILE]\n"
    "  analyze [--id ID | --spec JSON | template or --chain_layers N --width W] [--activation relu]\n"
    "          [--compare init,init,...] [--plot FILE.svg] [--samples N --analyze_steps T --probe_seed S]\n"
    "          [--weight_storage_error]\n"
    "                                  per-layer variance diagnostics of a set or spec (no set is stored);\n"
    "                                  with --weight_storage_error also the output error of bf16/int8 weights\n"
    "  sequence --sequence_id ID | --sequence_uint64 N [--state]\n"
    "                                  a stored sequence: its set, steps taken (its next sequence_step), B\n"
    "  bench --id ID [--rpc step|run|session|infer] [--concurrency N] [--duration 10s | --requests N] [--warmup 1s]\n"
    "        [--rate R] [--batch B] [--steps T]   load generator; creates the set from the template flags\n"
    "        (--layers --input_size --hidden_size) if it does not exist; reports requests/s, latency\n"
    "        p50/p90/p99/max and errors by code\n"
    "Exit status: 0 success, 1 the server refused or failed, 2 bad usage.";

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "lstmserve-cli: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string TensorJson(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat).contiguous();
  std::ostringstream out;
  out.precision(9);
  out << "{\"shape\":[" << absl::StrJoin(f.sizes(), ",") << "],\"values\":[";
  const float* p = f.data_ptr<float>();
  for (int64_t i = 0; i < f.numel(); ++i) out << (i ? "," : "") << p[i];
  out << "]}";
  return out.str();
}

std::string Summary(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat).flatten();
  std::ostringstream out;
  out.precision(6);
  out << "[" << absl::StrJoin(t.sizes(), ", ") << "] mean " << f.mean().item<double>() << " std "
      << (f.numel() > 1 ? f.std().item<double>() : 0.0) << "  first:";
  for (int64_t i = 0; i < std::min<int64_t>(f.numel(), 6); ++i) out << " " << f[i].item<float>();
  return out.str();
}

// A state tensor of GetSequence's response, as JSON values (or why it does not decode).
std::string StateText(const v1::Tensor& t) {
  auto dtype = lstmserve::wire::DTypeFromProto(t.dtype(), "state");
  if (!dtype.ok()) return std::string(dtype.status().message());
  auto value = lstmserve::wire::TensorFromProto(t, "state", *dtype, int64_t{1} << 30, c10::Device(c10::kCPU));
  return value.ok() ? TensorJson(*value) : std::string(value.status().message());
}

void PrintSet(const v1::ParameterSet& set) {
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(set).c_str());
    return;
  }
  std::printf("id:        %s\norigin:    %s\nchecksum:  %s\nbytes:     %lld\ndevice:    %s\ncreated:   %s\n",
              set.id().c_str(), v1::SetOrigin_Name(set.origin()).c_str(), set.checksum().c_str(),
              static_cast<long long>(set.byte_size()), set.device().c_str(),
              absl::FormatTime(absl::FromUnixSeconds(set.create_time().seconds()), absl::UTCTimeZone()).c_str());
  if (set.has_lstm()) {
    std::printf("lstm:      layers=%lld input_size=%lld hidden_size=%lld bias=%s\n",
                static_cast<long long>(set.lstm().num_layers()), static_cast<long long>(set.lstm().input_size()),
                static_cast<long long>(set.lstm().hidden_size()), set.lstm().bias() ? "true" : "false");
  }
  if (set.weight_storage() != v1::WEIGHT_STORAGE_UNSPECIFIED) {
    std::printf("weights:   %s (inputs, states and math float32)\n",
                v1::WeightStorage_Name(set.weight_storage()).c_str());
  }
  std::printf("tensors:\n");
  for (const auto& t : set.tensors()) {
    std::printf("  %-12s [%s] %s\n", t.name().c_str(), absl::StrJoin(t.shape(), ", ").c_str(),
                v1::DataType_Name(t.dtype()).c_str());
  }
}

void PrintState(const core::LstmState& state, const at::Tensor& outputs) {
  if (absl::GetFlag(FLAGS_json)) {
    std::vector<std::string> c, h;
    for (const auto& t : state.c) c.push_back(TensorJson(t));
    for (const auto& t : state.h) h.push_back(TensorJson(t));
    std::printf("{%s\"c\":[%s],\"h\":[%s]}\n",
                outputs.defined() ? ("\"outputs\":" + TensorJson(outputs) + ",").c_str() : "",
                absl::StrJoin(c, ",").c_str(), absl::StrJoin(h, ",").c_str());
    return;
  }
  if (outputs.defined()) std::printf("outputs  %s\n", Summary(outputs).c_str());
  for (size_t l = 0; l < state.c.size(); ++l) {
    std::printf("layer %zu  c %s\n         h %s\n", l, Summary(state.c[l]).c_str(), Summary(state.h[l]).c_str());
  }
}

// The input of step/run, in the set's dtype (random inputs are drawn in float32 and rounded,
// so a float16 or bfloat16 set gets the same values as a float32 one, to its precision).
absl::StatusOr<at::Tensor> InputTensor(Client& client, const std::string& id, bool sequence) {
  LSTMSERVE_ASSIGN_OR_RETURN(v1::ParameterSet set, client.Get(id));
  if (!set.has_lstm()) return absl::FailedPreconditionError(absl::StrCat("set '", id, "' is not a stacked LSTM"));
  core::DType dtype = core::DType::kFloat32;  // also of sets with reduced weight storage
  if (set.tensors_size() > 0 && set.weight_storage() == v1::WEIGHT_STORAGE_UNSPECIFIED) {
    LSTMSERVE_ASSIGN_OR_RETURN(dtype, lstmserve::wire::DTypeFromProto(set.tensors(0).dtype(), "the set's dtype"));
  }
  const auto in_dtype = [&](const at::Tensor& t) { return t.to(core::ToScalarType(dtype)); };
  if (!absl::GetFlag(FLAGS_input).empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(auto tensors, lstmserve::client::ReadTensorFile(absl::GetFlag(FLAGS_input)));
    if (tensors.empty()) return absl::InvalidArgumentError("the input file holds no tensor");
    for (const auto& t : tensors) {
      if (t.name == (sequence ? "inputs" : "x")) return in_dtype(t.value);
    }
    return in_dtype(tensors.front().value);
  }
  at::Generator gen = at::detail::createCPUGenerator(absl::GetFlag(FLAGS_input_seed));
  std::vector<int64_t> shape = {absl::GetFlag(FLAGS_batch), set.lstm().input_size()};
  if (sequence) shape.insert(shape.begin(), absl::GetFlag(FLAGS_steps));
  return in_dtype(at::empty(shape).normal_(0, 1, gen));
}

absl::Status WriteState(const core::LstmState& state, const at::Tensor& outputs) {
  if (absl::GetFlag(FLAGS_out).empty()) return absl::OkStatus();
  std::vector<core::NamedTensor> tensors;
  if (outputs.defined()) tensors.push_back({"outputs", outputs});
  for (size_t l = 0; l < state.c.size(); ++l) tensors.push_back({absl::StrCat("c_", l), state.c[l]});
  for (size_t l = 0; l < state.h.size(); ++l) tensors.push_back({absl::StrCat("h_", l), state.h[l]});
  return lstmserve::client::WriteTensorFile(absl::GetFlag(FLAGS_out), tensors);
}

std::string RequireId() {
  const std::string id = absl::GetFlag(FLAGS_id);
  if (id.empty()) core::UsageErrorExit("this command needs --id");
  return id;
}

// The spec of create and analyze: --spec JSON; or a chain of --chain_layers [--width,
// --width] weights; or the LSTM template flags. --weight_init (JSON or a short name) sets
// the weights' initializer.
v1::ParameterSetSpec SpecFromFlags() {
  v1::ParameterSetSpec spec;
  if (!absl::GetFlag(FLAGS_spec).empty()) {
    auto parsed = google::protobuf::util::JsonStringToMessage(absl::GetFlag(FLAGS_spec), &spec);
    if (!parsed.ok()) core::UsageErrorExit(absl::StrCat("--spec is not a ParameterSetSpec: ", parsed.ToString()));
    return spec;
  }
  v1::Initializer init;
  const bool has_init = !absl::GetFlag(FLAGS_weight_init).empty();
  if (has_init) {
    auto parsed = lstmserve::client::ParseInitializer(absl::GetFlag(FLAGS_weight_init));
    if (!parsed.ok()) core::UsageErrorExit(absl::StrCat("--weight_init: ", parsed.status().message()));
    init = *parsed;
  }
  spec.set_seed(absl::GetFlag(FLAGS_seed));
  const std::string convention = absl::GetFlag(FLAGS_fan_convention);
  if (convention != "torch" && convention != "matmul") core::UsageErrorExit("--fan_convention is torch or matmul");
  spec.set_fan_convention(convention == "torch" ? v1::FAN_CONVENTION_TORCH : v1::FAN_CONVENTION_MATMUL);
  if (absl::GetFlag(FLAGS_chain_layers) > 0) {
    for (int64_t l = 0; l < absl::GetFlag(FLAGS_chain_layers); ++l) {
      auto* t = spec.mutable_tensor_list()->add_tensors();
      t->set_name(absl::StrFormat("layer_%02d", l));
      t->add_shape(absl::GetFlag(FLAGS_width));
      t->add_shape(absl::GetFlag(FLAGS_width));
      *t->mutable_initializer() = has_init ? init : lstmserve::client::ParseInitializer("kaiming_uniform").value();
    }
    return spec;
  }
  auto* lstm = spec.mutable_lstm();
  lstm->set_num_layers(absl::GetFlag(FLAGS_layers));
  lstm->set_input_size(absl::GetFlag(FLAGS_input_size));
  lstm->set_hidden_size(absl::GetFlag(FLAGS_hidden_size));
  lstm->set_bias(absl::GetFlag(FLAGS_bias));
  if (has_init) *lstm->mutable_weight_initializer() = init;
  if (!absl::GetFlag(FLAGS_weight_storage).empty()) {
    auto storage = core::ParseWeightStorage(absl::GetFlag(FLAGS_weight_storage));
    if (!storage.ok()) core::UsageErrorExit(absl::StrCat("--weight_storage: ", storage.status().message()));
    spec.set_weight_storage(lstmserve::wire::WeightStorageToProto(*storage));
  }
  return spec;
}

// The spec with every weight's initializer replaced (for --compare).
v1::ParameterSetSpec WithWeightInit(v1::ParameterSetSpec spec, const v1::Initializer& init) {
  if (spec.has_lstm()) *spec.mutable_lstm()->mutable_weight_initializer() = init;
  if (spec.has_tensor_list()) {
    for (auto& t : *spec.mutable_tensor_list()->mutable_tensors()) *t.mutable_initializer() = init;
  }
  return spec;
}

int Analyze(Client& client) {
  v1::AnalyzeParameterSetRequest request;
  request.set_probe_seed(absl::GetFlag(FLAGS_probe_seed));
  request.set_samples(absl::GetFlag(FLAGS_samples));
  request.set_steps(absl::GetFlag(FLAGS_analyze_steps));
  request.set_weight_storage_error(absl::GetFlag(FLAGS_weight_storage_error));
  const std::map<std::string, v1::ChainActivation> activations = {{"relu", v1::CHAIN_ACTIVATION_RELU},
                                                                  {"leaky_relu", v1::CHAIN_ACTIVATION_LEAKY_RELU},
                                                                  {"tanh", v1::CHAIN_ACTIVATION_TANH},
                                                                  {"sigmoid", v1::CHAIN_ACTIVATION_SIGMOID},
                                                                  {"linear", v1::CHAIN_ACTIVATION_LINEAR}};
  const auto activation = activations.find(absl::GetFlag(FLAGS_activation));
  if (activation == activations.end())
    core::UsageErrorExit("--activation is relu, leaky_relu, tanh, sigmoid or linear");
  request.set_activation(activation->second);
  // What to analyse: a stored set, or one spec per compared initializer.
  std::vector<std::pair<std::string, v1::AnalyzeParameterSetRequest>> runs;
  const std::string compare = absl::GetFlag(FLAGS_compare);
  if (!absl::GetFlag(FLAGS_id).empty()) {
    if (!compare.empty()) core::UsageErrorExit("--compare needs a spec (template flags or --spec), not --id");
    request.set_parameter_set_id(absl::GetFlag(FLAGS_id));
    runs.emplace_back(absl::GetFlag(FLAGS_id), request);
  } else {
    const v1::ParameterSetSpec spec = SpecFromFlags();
    if (compare.empty()) {
      *request.mutable_spec() = spec;
      runs.emplace_back(absl::GetFlag(FLAGS_weight_init).empty() ? "spec" : absl::GetFlag(FLAGS_weight_init), request);
    }
    for (const std::string& name : std::vector<std::string>(absl::StrSplit(compare, ',', absl::SkipEmpty()))) {
      auto init = lstmserve::client::ParseInitializer(name);
      if (!init.ok()) core::UsageErrorExit(absl::StrCat("--compare: ", init.status().message()));
      *request.mutable_spec() = WithWeightInit(spec, *init);
      runs.emplace_back(name, request);
    }
  }
  std::vector<lstmserve::client::PlotSeries> forward, backward;
  bool lstm = false;
  for (const auto& [name, r] : runs) {
    auto result = client.Analyze(r);
    if (!result.ok()) return Fail(result.status());
    if (absl::GetFlag(FLAGS_json)) {
      std::string json;
      (void)google::protobuf::util::MessageToJsonString(*result, &json);
      std::printf("{\"name\":\"%s\",\"analysis\":%s}\n", name.c_str(), json.c_str());
    } else {
      std::printf("%s\n", lstmserve::client::AnalysisTable(name, *result).c_str());
    }
    const int color = static_cast<int>(forward.size());
    lstmserve::client::PlotSeries f{name, {}, false, color}, b{absl::StrCat(name, " (gradient)"), {}, true, color};
    lstm = result->lstm_layers_size() > 0;
    for (const auto& l : result->lstm_layers()) f.values.push_back(l.h_variance());
    for (const auto& l : result->chain_layers()) {
      f.values.push_back(l.forward_variance());
      b.values.push_back(l.gradient_variance());
    }
    forward.push_back(f);
    if (!b.values.empty()) backward.push_back(b);
  }
  const std::string plot = absl::GetFlag(FLAGS_plot);
  if (!plot.empty()) {
    std::vector<lstmserve::client::PlotSeries> all = forward;
    if (absl::GetFlag(FLAGS_plot_gradients)) all.insert(all.end(), backward.begin(), backward.end());
    const std::string svg = lstmserve::client::VariancePlotSvg(
        lstm ? "Hidden-state variance per LSTM layer" : "Pre-activation variance per layer",
        lstm ? "var(h)" : "variance", all);
    std::ofstream out(plot);
    out << svg;
    if (!out) return Fail(absl::InternalError(absl::StrCat("cannot write ", plot)));
    if (!absl::GetFlag(FLAGS_json)) std::printf("wrote %s\n", plot.c_str());
  }
  return 0;
}

int Main(const std::string& command) {
  lstmserve::client::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (absl::Status loaded = lstmserve::client::LoadClientSecurity(
          absl::GetFlag(FLAGS_tls_ca_file), absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
          absl::GetFlag(FLAGS_token_file), &options);
      !loaded.ok()) {
    core::UsageErrorExit(loaded.message());
  }
  auto client = Client::Connect(options);

  if (command == "health") {
    auto health = client->Health();
    if (!health.ok()) return Fail(health.status());
    std::printf(absl::GetFlag(FLAGS_json) ? "{\"status\":\"%s\"}\n" : "%s\n", health->c_str());
    return *health == "SERVING" ? 0 : 1;
  }
  if (command == "analyze") return Analyze(*client);
  if (command == "create") {
    const v1::ParameterSetSpec spec = SpecFromFlags();
    auto set = client->Create(spec, absl::GetFlag(FLAGS_id));
    if (!set.ok()) return Fail(set.status());
    PrintSet(*set);
    return 0;
  }
  if (command == "sequence") {
    v1::GetSequenceRequest request;
    if (!absl::GetFlag(FLAGS_sequence_id).empty() == (absl::GetFlag(FLAGS_sequence_uint64) != 0)) {
      core::UsageErrorExit("sequence needs one of --sequence_id and --sequence_uint64");
    }
    if (!absl::GetFlag(FLAGS_sequence_id).empty()) {
      request.set_string_id(absl::GetFlag(FLAGS_sequence_id));
    } else {
      request.set_uint64_id(absl::GetFlag(FLAGS_sequence_uint64));
    }
    request.set_include_state(absl::GetFlag(FLAGS_state));
    auto sequence = client->GetSequence(request);
    if (!sequence.ok()) return Fail(sequence.status());
    if (absl::GetFlag(FLAGS_json)) {
      std::printf("%s\n", Json(*sequence).c_str());
      return 0;
    }
    std::printf("set:       %s\nchecksum:  %s\nsteps:     %llu\nbatch:     %lld\n",
                sequence->parameter_set_id().c_str(), sequence->parameter_set_checksum().c_str(),
                static_cast<unsigned long long>(sequence->sequence_step()),
                static_cast<long long>(sequence->batch_size()));
    for (int l = 0; l < sequence->c_size() && l < sequence->h_size(); ++l) {
      std::printf("c[%d]:      %s\nh[%d]:      %s\n", l, StateText(sequence->c(l)).c_str(), l,
                  StateText(sequence->h(l)).c_str());
    }
    return 0;
  }
  if (command == "get") {
    auto set = client->Get(RequireId());
    if (!set.ok()) return Fail(set.status());
    PrintSet(*set);
    return 0;
  }
  if (command == "list") {
    auto sets = client->List();
    if (!sets.ok()) return Fail(sets.status());
    if (absl::GetFlag(FLAGS_json)) {
      std::vector<std::string> items;
      for (const auto& s : *sets) items.push_back(Json(s));
      std::printf("[%s]\n", absl::StrJoin(items, ",").c_str());
      return 0;
    }
    std::printf("%-32s %-8s %-12s %-22s %s\n", "ID", "TENSORS", "BYTES", "LSTM (L/I/H)", "CHECKSUM");
    for (const auto& s : *sets) {
      const std::string lstm = s.has_lstm() ? absl::StrCat(s.lstm().num_layers(), "/", s.lstm().input_size(), "/",
                                                           s.lstm().hidden_size(), s.lstm().bias() ? " +bias" : "")
                                            : "-";
      std::printf("%-32s %-8d %-12lld %-22s %s\n", s.id().c_str(), s.tensors_size(),
                  static_cast<long long>(s.byte_size()), lstm.c_str(), s.checksum().substr(0, 23).c_str());
    }
    return 0;
  }
  if (command == "delete") {
    const std::string id = RequireId();
    if (auto s = client->Delete(id); !s.ok()) return Fail(s);
    std::printf(absl::GetFlag(FLAGS_json) ? "{\"deleted\":\"%s\"}\n" : "deleted %s\n", id.c_str());
    return 0;
  }
  if (command == "export") {
    if (absl::GetFlag(FLAGS_out).empty()) core::UsageErrorExit("export needs --out FILE (.safetensors or .pt)");
    v1::ParameterSet meta;
    auto set = client->Export(RequireId(), &meta);
    if (!set.ok()) return Fail(set.status());
    if (auto s = lstmserve::client::WriteTensorFile(absl::GetFlag(FLAGS_out), set->tensors); !s.ok()) return Fail(s);
    if (!absl::GetFlag(FLAGS_json))
      std::printf("wrote %zu tensors to %s\n", set->tensors.size(), absl::GetFlag(FLAGS_out).c_str());
    else
      std::printf("%s\n", Json(meta).c_str());
    return 0;
  }
  if (command == "import") {
    if (absl::GetFlag(FLAGS_in).empty()) core::UsageErrorExit("import needs --in FILE (.safetensors or .pt)");
    auto tensors = lstmserve::client::ReadTensorFile(absl::GetFlag(FLAGS_in));
    if (!tensors.ok()) return Fail(tensors.status());
    std::optional<core::WeightStorage> storage;
    if (!absl::GetFlag(FLAGS_weight_storage).empty()) {
      auto parsed = core::ParseWeightStorage(absl::GetFlag(FLAGS_weight_storage));
      if (!parsed.ok()) core::UsageErrorExit(absl::StrCat("--weight_storage: ", parsed.status().message()));
      storage = *parsed;
    }
    auto set = client->Import(*tensors, absl::GetFlag(FLAGS_id), "", int64_t{1} << 20, storage);
    if (!set.ok()) return Fail(set.status());
    PrintSet(*set);
    return 0;
  }
  if (command == "step" || command == "run") {
    const std::string id = RequireId();
    const bool run = command == "run";
    auto input = InputTensor(*client, id, run);
    if (!input.ok()) return Fail(input.status());
    core::LstmState state;
    at::Tensor outputs;
    if (run) {
      auto result = client->Run(id, *input, {}, absl::GetFlag(FLAGS_final_state_only));
      if (!result.ok()) return Fail(result.status());
      state = std::move(result->final_state);
      outputs = result->outputs;
    } else {
      auto result = client->Step(id, *input);
      if (!result.ok()) return Fail(result.status());
      state = *std::move(result);
    }
    if (auto s = WriteState(state, outputs); !s.ok()) return Fail(s);
    PrintState(state, outputs);
    return 0;
  }
  if (command == "bench") {
    lstmserve::client::BenchOptions bench;
    bench.connection = options;
    bench.rpc = absl::GetFlag(FLAGS_rpc);
    bench.set_id = RequireId();
    bench.layers = absl::GetFlag(FLAGS_layers);
    bench.input_size = absl::GetFlag(FLAGS_input_size);
    bench.hidden_size = absl::GetFlag(FLAGS_hidden_size);
    bench.batch = absl::GetFlag(FLAGS_batch);
    bench.steps = absl::GetFlag(FLAGS_steps);
    bench.concurrency = absl::GetFlag(FLAGS_concurrency);
    bench.duration = absl::GetFlag(FLAGS_duration);
    bench.requests = absl::GetFlag(FLAGS_requests);
    bench.warmup = absl::GetFlag(FLAGS_warmup);
    bench.rate = absl::GetFlag(FLAGS_rate);
    bench.client_api = absl::GetFlag(FLAGS_client_api);
    bench.timeout = options.timeout;
    auto report = lstmserve::client::RunBench(bench);
    if (!report.ok()) return Fail(report.status());
    std::printf("%s\n", (absl::GetFlag(FLAGS_json) ? report->ToJson(bench) : report->ToText(bench)).c_str());
    return 0;
  }
  core::UsageErrorExit(absl::StrCat("unknown command '", command, "' (see --help)"));
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = lstmserve::core::ParseCommandLineOrExit(argc, argv, kUsage, {"client/src/cli.cc"}, 1);
  if (parsed.positional.empty()) lstmserve::core::UsageErrorExit("no command given (see --help)");
  return Main(parsed.positional[0]);
}
