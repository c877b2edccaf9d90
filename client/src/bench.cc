#include "bench.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

#include "inference/grpc_service.grpc.pb.h"
#include "lstmserve/core/status.h"
#include "lstmserve/v1/inference_service.grpc.pb.h"
#include "lstmserve/v1/parameter_service.grpc.pb.h"
#include "lstmserve/wire/conversions.h"

namespace lstmserve::client {
namespace {

struct Sample {
  double ms;
  grpc::StatusCode code;
};

// The requests of a run, built once: the generator measures the server, not its own
// serialisation.
struct Requests {
  const v1::StepRequest* step;
  const v1::RunRequest* run;
  const v1::SessionRequest* session_step;
  const inference::ModelInferRequest* infer;
};

at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::empty(shape).normal_(0, 1, gen);
}

// Finds the set (its input size decides the inputs) or creates it from the template.
absl::Status EnsureSet(const std::shared_ptr<grpc::Channel>& channel, BenchOptions& options) {
  auto stub = v1::ParameterService::NewStub(channel);
  v1::GetParameterSetRequest get;
  get.set_parameter_set_id(options.set_id);
  v1::GetParameterSetResponse got;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  PrepareContext(options.connection, &ctx);
  const grpc::Status status = stub->GetParameterSet(&ctx, get, &got);
  if (status.ok() && got.parameter_set().has_lstm()) {
    options.input_size = got.parameter_set().lstm().input_size();
    options.hidden_size = got.parameter_set().lstm().hidden_size();
    options.layers = got.parameter_set().lstm().num_layers();
    return absl::OkStatus();
  }
  if (status.ok()) return absl::FailedPreconditionError(absl::StrCat("set '", options.set_id, "' is not an LSTM"));
  // Another server of the Open Inference Protocol (Triton, MLServer, ...): --rpc infer drives
  // its model `--id` with the template's input size.
  if (status.error_code() == grpc::UNIMPLEMENTED && options.rpc == "infer") return absl::OkStatus();
  if (status.error_code() != grpc::NOT_FOUND) return wire::FromGrpcStatus(status);
  v1::CreateParameterSetRequest create;
  create.set_parameter_set_id(options.set_id);
  create.mutable_spec()->mutable_lstm()->set_num_layers(options.layers);
  create.mutable_spec()->mutable_lstm()->set_input_size(options.input_size);
  create.mutable_spec()->mutable_lstm()->set_hidden_size(options.hidden_size);
  v1::CreateParameterSetResponse created;
  grpc::ClientContext ctx2;
  ctx2.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  PrepareContext(options.connection, &ctx2);
  return wire::FromGrpcStatus(stub->CreateParameterSet(&ctx2, create, &created));
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())));
  return sorted[i];
}

void RunClosedLoopAsync(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options,
                        const Requests& requests, absl::Time measure_from, absl::Time stop_at,
                        std::atomic<int64_t>& measured, std::vector<std::vector<Sample>>& samples);
void RunThreads(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options, const Requests& requests,
                absl::Time start, absl::Time measure_from, absl::Time stop_at, std::atomic<int64_t>& measured,
                std::vector<std::vector<Sample>>& samples);
void RunSessionsAsync(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options,
                      const v1::SessionRequest& step, absl::Time measure_from, absl::Time stop_at,
                      std::atomic<int64_t>& measured, std::vector<std::vector<Sample>>& samples);
BenchReport Summarise(const std::vector<std::vector<Sample>>& samples, absl::Time measure_from, absl::Time end);

}  // namespace

absl::StatusOr<BenchReport> RunBench(const BenchOptions& requested) {
  BenchOptions options = requested;
  if (options.rpc != "step" && options.rpc != "run" && options.rpc != "session" && options.rpc != "infer") {
    return absl::InvalidArgumentError("--rpc is step, run, session or infer");
  }
  if (options.client_api != "callback" && options.client_api != "sync") {
    return absl::InvalidArgumentError(
        absl::StrCat("client_api is '", options.client_api, "'; expected callback or sync"));
  }
  if (options.concurrency < 1 || options.batch < 1 || options.steps < 1 || options.rate < 0) {
    return absl::InvalidArgumentError("--concurrency, --batch and --steps must be >= 1, --rate >= 0");
  }
  ClientOptions connection = options.connection;
  connection.max_message_bytes = int64_t{256} << 20;  // large Run requests
  auto channel = MakeChannel(connection);
  LSTMSERVE_RETURN_IF_ERROR(EnsureSet(channel, options));

  // Requests are built once: the generator measures the server, not its own serialisation.
  v1::StepRequest step;
  step.set_parameter_set_id(options.set_id);
  wire::TensorToProto(Randn({options.batch, options.input_size}, 1), step.mutable_x());
  v1::RunRequest run;
  run.set_parameter_set_id(options.set_id);
  wire::TensorToProto(Randn({options.steps, options.batch, options.input_size}, 2), run.mutable_inputs());
  v1::SessionRequest session_step;
  *session_step.mutable_x() = step.x();
  Requests requests{&step, &run, &session_step, nullptr};
  inference::ModelInferRequest infer;  // the Open Inference Protocol's form of the step
  infer.set_model_name(options.set_id);
  auto* input = infer.add_inputs();
  input->set_name("INPUT");
  input->set_datatype("FP32");
  input->mutable_shape()->Add(1);
  input->mutable_shape()->Add(step.x().shape().begin(), step.x().shape().end());
  infer.add_raw_input_contents(step.x().data());
  requests.infer = &infer;

  const absl::Time start = absl::Now();
  const absl::Time measure_from = start + options.warmup;
  const absl::Time stop_at = measure_from + options.duration;
  std::atomic<int64_t> measured{0};
  std::vector<std::vector<Sample>> samples(options.concurrency);
  if (options.rate == 0 && options.client_api == "callback" && options.rpc == "session") {
    RunSessionsAsync(channel, options, session_step, measure_from, stop_at, measured, samples);
  } else if (options.rate == 0 && options.client_api == "callback") {
    RunClosedLoopAsync(channel, options, requests, measure_from, stop_at, measured, samples);
  } else {
    RunThreads(channel, options, requests, start, measure_from, stop_at, measured, samples);
  }
  const absl::Time end = std::min(absl::Now(), stop_at);
  return Summarise(samples, measure_from, end);
}

namespace {

// Closed loop without a thread per caller (like ghz): `concurrency` calls in flight on
// gRPC's callback API, each completion issuing the next, so the generator's own CPU use
// stays small on a machine it shares with the server.
void RunClosedLoopAsync(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options,
                        const Requests& requests, absl::Time measure_from, absl::Time stop_at,
                        std::atomic<int64_t>& measured, std::vector<std::vector<Sample>>& samples) {
  auto stub = v1::InferenceService::NewStub(channel);
  auto oip = inference::GRPCInferenceService::NewStub(channel);
  struct Caller {
    std::unique_ptr<grpc::ClientContext> context;
    v1::StepResponse step_response;
    v1::RunResponse run_response;
    inference::ModelInferResponse infer_response;
    absl::Time sent;
  };
  std::vector<Caller> callers(options.concurrency);
  absl::Mutex mu;
  int running = options.concurrency;
  std::function<void(int)> issue = [&](int i) {
    Caller& c = callers[i];
    c.context = std::make_unique<grpc::ClientContext>();
    c.context->set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
    PrepareContext(options.connection, c.context.get());
    c.sent = absl::Now();
    auto done = [&, i](grpc::Status status) {
      Caller& me = callers[i];
      const absl::Time now = absl::Now();
      if (me.sent >= measure_from) {  // each caller's completions are sequential: no lock
        samples[i].push_back({absl::ToDoubleMilliseconds(now - me.sent), status.error_code()});
        measured.fetch_add(1);
      }
      const bool more =
          now < stop_at && (options.requests == 0 || now < measure_from || measured.load() < options.requests);
      if (more) {
        issue(i);
      } else {
        absl::MutexLock lock(&mu);
        --running;
      }
    };
    if (options.rpc == "step") {
      stub->async()->Step(c.context.get(), requests.step, &c.step_response, std::move(done));
    } else if (options.rpc == "infer") {
      oip->async()->ModelInfer(c.context.get(), requests.infer, &c.infer_response, std::move(done));
    } else {
      stub->async()->Run(c.context.get(), requests.run, &c.run_response, std::move(done));
    }
  };
  for (int i = 0; i < options.concurrency; ++i) issue(i);
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &running));
}

// Closed-loop sessions on the callback API: one stream per caller, one step in flight each.
class SessionCaller final : public grpc::ClientBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionCaller(v1::InferenceService::Stub* stub, const BenchOptions& options, const v1::SessionRequest& step,
                absl::Time measure_from, absl::Time stop_at, std::atomic<int64_t>& measured,
                std::vector<Sample>& samples, std::function<void()> finished)
      : options_(options),
        step_(step),
        measure_from_(measure_from),
        stop_at_(stop_at),
        measured_(measured),
        samples_(samples),
        finished_(std::move(finished)) {
    start_.mutable_start()->set_parameter_set_id(options.set_id);
    start_.mutable_start()->set_batch_size(options.batch);
    PrepareContext(options.connection, &context_);
    stub->async()->Session(&context_, this);
    StartWrite(&start_);
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (!started_) {
      started_ = true;
      Send();
    } else {
      StartRead(&response_);
    }
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const absl::Time now = absl::Now();
    if (sent_ >= measure_from_) {
      samples_.push_back({absl::ToDoubleMilliseconds(now - sent_), grpc::OK});
      measured_.fetch_add(1);
    }
    if (now < stop_at_ && (options_.requests == 0 || now < measure_from_ || measured_.load() < options_.requests)) {
      Send();
    } else {
      StartWritesDone();
    }
  }
  void OnDone(const grpc::Status& status) override {
    if (!status.ok()) samples_.push_back({0, status.error_code()});
    auto finished = std::move(finished_);
    delete this;
    finished();
  }

 private:
  void Send() {
    sent_ = absl::Now();
    StartWrite(&step_);
  }

  const BenchOptions& options_;
  const v1::SessionRequest& step_;
  const absl::Time measure_from_, stop_at_;
  std::atomic<int64_t>& measured_;
  std::vector<Sample>& samples_;
  std::function<void()> finished_;
  grpc::ClientContext context_;
  v1::SessionRequest start_;
  v1::SessionResponse response_;
  absl::Time sent_;
  bool started_ = false;
};

void RunSessionsAsync(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options,
                      const v1::SessionRequest& step, absl::Time measure_from, absl::Time stop_at,
                      std::atomic<int64_t>& measured, std::vector<std::vector<Sample>>& samples) {
  auto stub = v1::InferenceService::NewStub(channel);
  absl::Mutex mu;
  int running = options.concurrency;
  for (int i = 0; i < options.concurrency; ++i) {
    new SessionCaller(stub.get(), options, step, measure_from, stop_at, measured, samples[i], [&] {
      absl::MutexLock lock(&mu);
      --running;
    });
  }
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &running));
}

// One thread per caller on the sync API: the open loop at a fixed rate, or (rate 0) the
// closed loop of --client_api=sync.
void RunThreads(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options, const Requests& requests,
                absl::Time start, absl::Time measure_from, absl::Time stop_at, std::atomic<int64_t>& measured,
                std::vector<std::vector<Sample>>& samples) {
  std::vector<std::thread> callers;
  for (int i = 0; i < options.concurrency; ++i) {
    callers.emplace_back([&, i] {
      auto inference = v1::InferenceService::NewStub(channel);
      auto oip = inference::GRPCInferenceService::NewStub(channel);
      std::unique_ptr<grpc::ClientContext> session_ctx;
      std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream;
      if (options.rpc == "session") {
        session_ctx = std::make_unique<grpc::ClientContext>();
        PrepareContext(options.connection, session_ctx.get());
        stream = inference->Session(session_ctx.get());
        v1::SessionRequest open;
        open.mutable_start()->set_parameter_set_id(options.set_id);
        open.mutable_start()->set_batch_size(options.batch);
        stream->Write(open);
      }
      const absl::Duration interval =
          options.rate > 0 ? absl::Seconds(options.concurrency / options.rate) : absl::ZeroDuration();
      absl::Time next = start + (options.rate > 0 ? absl::Seconds(i / options.rate) : absl::ZeroDuration());
      while (true) {
        if (options.rate > 0) {
          const absl::Time now = absl::Now();
          if (next > now) absl::SleepFor(next - now);
        }
        const absl::Time sent = options.rate > 0 ? next : absl::Now();  // open loop: from the intended time
        if (sent >= stop_at) break;
        if (options.requests > 0 && sent >= measure_from && measured.load() >= options.requests) break;
        grpc::Status status;
        if (options.rpc == "session") {
          v1::SessionResponse response;
          if (!stream->Write(*requests.session_step) || !stream->Read(&response)) {
            stream->WritesDone();
            status = stream->Finish();
            if (status.ok()) status = grpc::Status(grpc::UNKNOWN, "session ended");
          }
        } else {
          grpc::ClientContext ctx;
          ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
          PrepareContext(options.connection, &ctx);
          if (options.rpc == "step") {
            v1::StepResponse response;
            status = inference->Step(&ctx, *requests.step, &response);
          } else if (options.rpc == "infer") {
            inference::ModelInferResponse response;
            status = oip->ModelInfer(&ctx, *requests.infer, &response);
          } else {
            v1::RunResponse response;
            status = inference->Run(&ctx, *requests.run, &response);
          }
        }
        const absl::Time done = absl::Now();
        if (sent >= measure_from) {
          samples[i].push_back({absl::ToDoubleMilliseconds(done - sent), status.error_code()});
          measured.fetch_add(1);
        }
        if (options.rpc == "session" && !status.ok()) break;  // the stream is gone
        next += interval;
      }
      if (stream) {
        stream->WritesDone();
        (void)stream->Finish();
      }
    });
  }
  for (auto& t : callers) t.join();
}

BenchReport Summarise(const std::vector<std::vector<Sample>>& samples, absl::Time measure_from, absl::Time end) {
  BenchReport report;
  std::vector<double> latencies;
  for (const auto& per_caller : samples) {
    for (const Sample& s : per_caller) {
      if (s.code == grpc::OK) {
        ++report.ok;
        latencies.push_back(s.ms);
      } else {
        ++report.errors[absl::StatusCodeToString(static_cast<absl::StatusCode>(s.code))];
      }
    }
  }
  std::sort(latencies.begin(), latencies.end());
  report.seconds = std::max(1e-9, absl::ToDoubleSeconds(end - measure_from));
  report.requests_per_second = static_cast<double>(report.ok) / report.seconds;
  report.p50_ms = Percentile(latencies, 0.50);
  report.p90_ms = Percentile(latencies, 0.90);
  report.p99_ms = Percentile(latencies, 0.99);
  report.max_ms = latencies.empty() ? 0 : latencies.back();
  double sum = 0;
  for (double v : latencies) sum += v;
  report.mean_ms = latencies.empty() ? 0 : sum / static_cast<double>(latencies.size());
  return report;
}

}  // namespace

std::string BenchReport::ToJson(const BenchOptions& o) const {
  std::vector<std::string> errs;
  for (const auto& [code, n] : errors) errs.push_back(absl::StrFormat("\"%s\":%d", code, n));
  return absl::StrFormat(
      "{\"target\":\"%s\",\"rpc\":\"%s\",\"set\":\"%s\",\"layers\":%d,\"input_size\":%d,\"hidden_size\":%d,"
      "\"batch\":%d,\"steps\":%d,\"concurrency\":%d,\"rate\":%g,\"seconds\":%.3f,\"ok\":%d,"
      "\"requests_per_second\":%.2f,\"latency_ms\":{\"mean\":%.4f,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,"
      "\"max\":%.4f},\"errors\":{%s}}",
      o.connection.target, o.rpc, o.set_id, o.layers, o.input_size, o.hidden_size, o.batch,
      o.rpc == "run" ? o.steps : 1, o.concurrency, o.rate, seconds, ok, requests_per_second, mean_ms, p50_ms, p90_ms,
      p99_ms, max_ms, absl::StrJoin(errs, ","));
}

std::string BenchReport::ToText(const BenchOptions& o) const {
  std::string errs;
  for (const auto& [code, n] : errors) absl::StrAppend(&errs, " ", code, "=", n);
  return absl::StrFormat(
      "%s on %s (L=%d I=%d H=%d, B=%d%s), concurrency %d%s, %.1f s measured\n"
      "  %d ok, %.1f requests/s\n  latency ms: mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n"
      "  errors:%s\n",
      o.rpc, o.set_id, o.layers, o.input_size, o.hidden_size, o.batch,
      o.rpc == "run" ? absl::StrCat(", T=", o.steps) : "", o.concurrency,
      o.rate > 0 ? absl::StrFormat(", open loop at %g req/s", o.rate) : std::string(", closed loop"), seconds, ok,
      requests_per_second, mean_ms, p50_ms, p90_ms, p99_ms, max_ms, errs.empty() ? " none" : errs);
}

}  // namespace lstmserve::client
