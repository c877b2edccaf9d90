#include "lstmserve/server/metrics.h"

#include <CivetServer.h>
#include <dirent.h>
#include <netdb.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

#include "lstmserve/server/access.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/options.h"

namespace lstmserve::server {
namespace {

constexpr int kNumCodes = 17;  // grpc::StatusCode OK .. UNAUTHENTICATED

// Latency of a call, 100 us to 10 s.
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
// Batch waits and compute times, 10 us to 10 s.
const prometheus::Histogram::BucketBoundaries kBatchTimeBuckets = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
                                                                   0.001,   0.0025,   0.005,   0.01,   0.025,   0.05,
                                                                   0.1,     0.25,     0.5,     1,      2.5,     10};
// The server's own hops of a call: 1 us to 10 ms.
const prometheus::Histogram::BucketBoundaries kPhaseBuckets = {
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01};
// Rows in a batch: powers of two.
const prometheus::Histogram::BucketBoundaries kBatchRowBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};

std::string CodeName(int code) {
  static const std::array<const char*, kNumCodes> kNames = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  return kNames[static_cast<size_t>(code)];
}

// The children of one method, made at start.
struct MethodMetrics {
  prometheus::Histogram* duration = nullptr;
  std::array<prometheus::Counter*, kNumCodes> requests{};
};

// What the process reads of itself from /proc (Linux).
struct ProcessFigures {
  double cpu_seconds = 0;
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double start_time_seconds = 0;
  double threads = 0;
  double open_fds = 0;
  double max_fds = 0;
};

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    double t = 0;
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "btime ") && absl::SimpleAtod(rest, &t)) return t;
  }
  return 0;
}

ProcessFigures ReadProcess() {
  ProcessFigures f;
  static const double kTicks = static_cast<double>(sysconf(_SC_CLK_TCK));
  static const double kPage = static_cast<double>(sysconf(_SC_PAGESIZE));
  static const double kBoot = BootTimeSeconds();
  std::ifstream in("/proc/self/stat");
  const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name is in parentheses and may hold spaces: fields count from after it.
  const size_t close = stat.rfind(')');
  if (close != std::string::npos) {
    std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
    // fields[0] is field 3 (state) of proc(5).
    const auto field = [&](size_t n) {
      double v = 0;
      if (n - 3 < fields.size()) (void)absl::SimpleAtod(fields[n - 3], &v);
      return v;
    };
    f.cpu_seconds = (field(14) + field(15)) / kTicks;
    f.threads = field(20);
    f.start_time_seconds = kBoot + field(22) / kTicks;
    f.virtual_bytes = field(23);
    f.resident_bytes = field(24) * kPage;
  }
  if (DIR* dir = opendir("/proc/self/fd")) {
    int n = 0;
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(dir);
    f.open_fds = n - 1;  // less the one opendir holds
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) f.max_fds = static_cast<double>(limit.rlim_cur);
  return f;
}

prometheus::MetricFamily Family(const std::string& name, const std::string& help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void AddValue(prometheus::MetricFamily& family, double value,
              std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  if (family.type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  family.metric.push_back(std::move(m));
}

}  // namespace

// The figures read at scrape time: the server's snapshot and the process.
class ScrapeCollector final : public prometheus::Collectable {
 public:
  void SetSource(std::function<MetricsSnapshot()> source) {
    absl::MutexLock lock(&mu_);
    source_ = std::move(source);
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    const ProcessFigures p = ReadProcess();
    const std::pair<const char*, std::pair<const char*, double>> process[] = {
        {"process_resident_memory_bytes", {"Resident memory size in bytes.", p.resident_bytes}},
        {"process_virtual_memory_bytes", {"Virtual memory size in bytes.", p.virtual_bytes}},
        {"process_start_time_seconds",
         {"Start time of the process since unix epoch in seconds.", p.start_time_seconds}},
        {"process_open_fds", {"Number of open file descriptors.", p.open_fds}},
        {"process_max_fds", {"Maximum number of open file descriptors.", p.max_fds}},
        {"process_threads", {"Number of OS threads in the process.", p.threads}},
    };
    out.push_back(
        Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", MetricType::Counter));
    AddValue(out.back(), p.cpu_seconds);
    for (const auto& [name, rest] : process) {
      out.push_back(Family(name, rest.first, MetricType::Gauge));
      AddValue(out.back(), rest.second);
    }

    std::function<MetricsSnapshot()> source;
    {
      absl::MutexLock lock(&mu_);
      source = source_;
    }
    if (!source) return out;
    const MetricsSnapshot s = source();
    const auto gauge = [&](const char* name, const char* help, double v) {
      out.push_back(Family(name, help, MetricType::Gauge));
      AddValue(out.back(), v);
    };
    const auto counter = [&](const char* name, const char* help, double v) {
      out.push_back(Family(name, help, MetricType::Counter));
      AddValue(out.back(), v);
    };
    gauge("lstmserve_batch_queue_depth", "Inference requests (Step, Run, Session steps) waiting for a batch.",
          static_cast<double>(s.queue_depth));
    gauge("lstmserve_batch_queue_capacity",
          "Most inference requests that may wait (--max_queued_requests); beyond, RESOURCE_EXHAUSTED.",
          static_cast<double>(s.queue_capacity));
    out.push_back(Family("lstmserve_batch_rejections_total",
                         "Inference requests answered without being computed, by reason: queue_full "
                         "(RESOURCE_EXHAUSTED past --max_queued_requests), deadline_exceeded and cancelled "
                         "(while waiting in the queue).",
                         MetricType::Counter));
    AddValue(out.back(), static_cast<double>(s.rejected_queue_full), {{"reason", "queue_full"}});
    AddValue(out.back(), static_cast<double>(s.expired_deadline), {{"reason", "deadline_exceeded"}});
    AddValue(out.back(), static_cast<double>(s.expired_cancelled), {{"reason", "cancelled"}});
    gauge("lstmserve_sessions_active",
          "Sequences open in the sequence store (Sessions' and the Open Inference Protocol's; with a shared "
          "store: on every replica); -1 while the store does not answer.",
          static_cast<double>(s.sessions_active));
    out.push_back(Family("lstmserve_sequence_store_operations_total",
                         "Operations on the sequence store (--sequence_store), by operation (load: a record read; "
                         "commit: a step's new record written) and result (ok, error: the store failed or was "
                         "unreachable, conflict: another replica had stepped the sequence; copy: a load answered "
                         "by this server's copy of what it wrote last).",
                         MetricType::Counter));
    auto labels = [&](const char* operation, const char* result) {
      std::vector<prometheus::ClientMetric::Label> l = {{"operation", operation}};
      if (absl::string_view(result) != "all") l.push_back({"result", result});
      l.push_back({"store", s.sequence_store});
      return l;
    };
    AddValue(out.back(), static_cast<double>(s.sequence_loads - s.sequence_load_errors), labels("load", "ok"));
    AddValue(out.back(), static_cast<double>(s.sequence_load_errors), labels("load", "error"));
    AddValue(out.back(), static_cast<double>(s.sequence_copies_used), labels("load", "copy"));
    AddValue(out.back(), static_cast<double>(s.sequence_commits - s.sequence_commit_errors - s.sequence_conflicts),
             labels("commit", "ok"));
    AddValue(out.back(), static_cast<double>(s.sequence_commit_errors), labels("commit", "error"));
    AddValue(out.back(), static_cast<double>(s.sequence_conflicts), labels("commit", "conflict"));
    out.push_back(Family("lstmserve_sequence_store_seconds_total",
                         "Seconds spent in sequence store operations, by operation (divide by "
                         "lstmserve_sequence_store_operations_total for the mean latency).",
                         MetricType::Counter));
    AddValue(out.back(), s.sequence_load_seconds, labels("load", "all"));
    AddValue(out.back(), s.sequence_commit_seconds, labels("commit", "all"));
    counter("lstmserve_session_steps_total", "Session steps and sequence requests (Open Inference Protocol) computed.",
            static_cast<double>(s.session_steps));
    out.push_back(Family("lstmserve_session_rejections_total",
                         "Session streams and sequences refused or ended by the server, by reason: "
                         "max_sessions (a new sequence refused at its first step, --max_sequences) and idle_timeout "
                         "(Session streams cancelled, --sequence_idle_timeout).",
                         MetricType::Counter));
    AddValue(out.back(), static_cast<double>(s.sessions_rejected), {{"reason", "max_sessions"}});
    AddValue(out.back(), static_cast<double>(s.sessions_idle_cancelled), {{"reason", "idle_timeout"}});
    gauge("lstmserve_parameter_sets", "Parameter sets held in memory.", static_cast<double>(s.parameter_sets));
    gauge("lstmserve_parameter_set_bytes",
          "Bytes of the parameter sets held in memory: their tensors (on the serving device) and the layouts "
          "derived from them (lstmserve_parameter_set_derived_bytes); --max_total_set_bytes bounds it.",
          static_cast<double>(s.parameter_set_bytes));
    gauge("lstmserve_parameter_set_derived_bytes",
          "Bytes of the layouts the kernels derived from the sets held, made on the first call that needs each: "
          "oneDNN's reordered float32 weights, packed int8/bf16 weights, small reduced sets' float32 copies.",
          static_cast<double>(s.parameter_set_derived_bytes));
    if (s.device_memory_allocated_bytes) {
      gauge("lstmserve_cuda_memory_allocated_bytes", "CUDA memory allocated by LibTorch's caching allocator.",
            static_cast<double>(*s.device_memory_allocated_bytes));
    }
    if (s.device_memory_reserved_bytes) {
      gauge("lstmserve_cuda_memory_reserved_bytes", "CUDA memory reserved by LibTorch's caching allocator.",
            static_cast<double>(*s.device_memory_reserved_bytes));
    }
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  std::function<MetricsSnapshot()> source_ ABSL_GUARDED_BY(mu_);
};

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<ScrapeCollector> scrape = std::make_shared<ScrapeCollector>();
  // Full method path ("/lstmserve.v1.InferenceService/Step") -> its children; read-only
  // after construction.
  std::map<std::string, MethodMetrics, std::less<>> methods;
  MethodMetrics other;
  prometheus::Histogram* batch_rows = nullptr;
  prometheus::Histogram* batch_compute = nullptr;
  prometheus::Histogram* queue_wait = nullptr;
  // lstmserve_batch_kernel_total by kernel name, every name made up front (read-only after).
  std::vector<std::pair<std::string, prometheus::Counter*>> kernels;
  prometheus::Histogram* phase_decode = nullptr;
  prometheus::Histogram* phase_validate = nullptr;
  prometheus::Histogram* phase_encode = nullptr;
  std::array<std::array<prometheus::Counter*, 2>, 4> store_ops{};  // [operation][ok]
  prometheus::Gauge* store_load_seconds = nullptr;
  std::array<prometheus::Counter*, 2> set_unloads{};  // [memory (least recently used), request]
  absl::Mutex exposer_mu;
  std::unique_ptr<prometheus::Exposer> exposer ABSL_GUARDED_BY(exposer_mu);
  std::string address ABSL_GUARDED_BY(exposer_mu);  // "HOST:PORT" it listens on

  const MethodMetrics& For(absl::string_view method) const {
    auto it = methods.find(method);
    return it == methods.end() ? other : it->second;
  }
};

namespace {

MethodMetrics MakeMethod(prometheus::Family<prometheus::Counter>& requests,
                         prometheus::Family<prometheus::Histogram>& duration, const std::string& service,
                         const std::string& method) {
  MethodMetrics m;
  m.duration = &duration.Add({{"service", service}, {"method", method}}, kLatencyBuckets);
  for (int code = 0; code < kNumCodes; ++code) {
    m.requests[static_cast<size_t>(code)] =
        &requests.Add({{"service", service}, {"method", method}, {"code", CodeName(code)}});
  }
  return m;
}

// Counts and times one call: from its start to the status the server sends. A call that
// ends without sending one (the client went away first) counts as CANCELLED.
class CallInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit CallInterceptor(const MethodMetrics* metrics) : metrics_(metrics), start_(absl::Now()) {}
  ~CallInterceptor() override {
    if (!recorded_) Record(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (!recorded_ &&
        methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Record(grpc::StatusCode code) {
    recorded_ = true;
    const int c = static_cast<int>(code);
    metrics_->requests[static_cast<size_t>(c >= 0 && c < kNumCodes ? c : 2)]->Increment();
    metrics_->duration->Observe(absl::ToDoubleSeconds(absl::Now() - start_));
  }

  const MethodMetrics* metrics_;
  const absl::Time start_;
  bool recorded_ = false;
};

class InterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit InterceptorFactory(std::shared_ptr<const Metrics::Impl> impl) : impl_(std::move(impl)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new CallInterceptor(&impl_->For(info->method() == nullptr ? "" : info->method()));
  }

 private:
  std::shared_ptr<const Metrics::Impl> impl_;
};

}  // namespace

Metrics::Metrics(const BuildInfo& build) : impl_(std::make_shared<Impl>()) {
  auto& registry = *impl_->registry;
  auto& requests = prometheus::BuildCounter()
                       .Name("lstmserve_requests_total")
                       .Help(
                           "Calls handled (gRPC, and HTTP as service inference.http), by service, method "
                           "and status code.")
                       .Register(registry);
  auto& duration =
      prometheus::BuildHistogram()
          .Name("lstmserve_request_duration_seconds")
          .Help("Time from a call's arrival to its status, by service and method (for streams: the whole stream).")
          .Register(registry);
  // Every method of the access table (access.h) is counted by name; calls to any other
  // method count as service="other", method="other".
  for (const Method& method : GrpcMethods()) {
    impl_->methods.emplace(absl::StrCat("/", method.service, "/", method.name),
                           MakeMethod(requests, duration, method.service, method.name));
  }
  for (const Method& route : HttpRoutes()) {
    impl_->methods.emplace(absl::StrCat("/", route.service, "/", route.name),
                           MakeMethod(requests, duration, route.service, route.name));
  }
  impl_->other = MakeMethod(requests, duration, "other", "other");

  impl_->batch_rows = &prometheus::BuildHistogram()
                           .Name("lstmserve_batch_size_rows")
                           .Help("Rows (sum of the requests' batch sizes) in each core call of the batcher.")
                           .Register(registry)
                           .Add({}, kBatchRowBuckets);
  impl_->batch_compute = &prometheus::BuildHistogram()
                              .Name("lstmserve_batch_compute_seconds")
                              .Help("Time of each batch's core call.")
                              .Register(registry)
                              .Add({}, kBatchTimeBuckets);
  auto& kernels = prometheus::BuildCounter()
                      .Name("lstmserve_batch_kernel_total")
                      .Help(
                          "Batches computed, by the core kernel that ran them: the path (small_batch, blas, onednn, "
                          "generic, cuda_fused, cuda_gemm), or on the BLAS path the core's packed GEMMs (packed_f32, "
                          "packed_int8, packed_bf16) or int8/bf16 weights widened for BLAS (blas_widened).")
                      .Register(registry);
  for (const char* name : {"small_batch", "blas", "onednn", "generic", "cuda_fused", "cuda_gemm", "packed_f32",
                           "packed_int8", "packed_bf16", "blas_widened"}) {
    impl_->kernels.emplace_back(name, &kernels.Add({{"kernel", name}}));
  }
  impl_->queue_wait = &prometheus::BuildHistogram()
                           .Name("lstmserve_batch_queue_wait_seconds")
                           .Help("Time each inference request waited in the queue before its batch was computed.")
                           .Register(registry)
                           .Add({}, kBatchTimeBuckets);
  auto& phases = prometheus::BuildHistogram()
                     .Name("lstmserve_inference_phase_seconds")
                     .Help(
                         "The server's hops of each Step and Run call besides the queue wait and the compute: "
                         "decode (request bytes to message), validate (message to queued job), encode "
                         "(result to response bytes).")
                     .Register(registry);
  impl_->phase_decode = &phases.Add({{"phase", "decode"}}, kPhaseBuckets);
  impl_->phase_validate = &phases.Add({{"phase", "validate"}}, kPhaseBuckets);
  impl_->phase_encode = &phases.Add({{"phase", "encode"}}, kPhaseBuckets);
  auto& store_ops = prometheus::BuildCounter()
                        .Name("lstmserve_store_operations_total")
                        .Help(
                            "Parameter store operations by kind (load at start, read on a miss, write, delete) "
                            "and result (ok, error).")
                        .Register(registry);
  const char* operations[] = {"load", "read", "write", "delete"};
  for (size_t op = 0; op < 4; ++op) {
    impl_->store_ops[op][0] = &store_ops.Add({{"operation", operations[op]}, {"result", "error"}});
    impl_->store_ops[op][1] = &store_ops.Add({{"operation", operations[op]}, {"result", "ok"}});
  }
  auto& unloads = prometheus::BuildCounter()
                      .Name("lstmserve_set_unloads_total")
                      .Help(
                          "Parameter sets dropped from memory (their files stay): reason=\"memory\" for the least "
                          "recently used, to make room under --max_total_set_bytes; reason=\"request\" for the "
                          "model-repository extension's unload.")
                      .Register(registry);
  impl_->set_unloads[0] = &unloads.Add({{"reason", "memory"}});
  impl_->set_unloads[1] = &unloads.Add({{"reason", "request"}});
  impl_->store_load_seconds = &prometheus::BuildGauge()
                                   .Name("lstmserve_store_load_duration_seconds")
                                   .Help("Time the server took to load its store at start.")
                                   .Register(registry)
                                   .Add({});
  prometheus::BuildGauge()
      .Name("lstmserve_build_info")
      .Help(
          "Always 1; the labels say which lstmserve, LibTorch, serving device, CPU BLAS kernels and CPU kernel "
          "instruction-set level (isa) this is.")
      .Register(registry)
      .Add({{"version", build.version},
            {"libtorch_version", build.libtorch_version},
            {"device", build.device},
            {"blas", build.blas},
            {"blas_core", build.blas_core},
            {"isa", build.isa}})
      .Set(1);
}

namespace {

// Opens and closes a TCP connection to "HOST:PORT" (a wildcard host: the loopback), and
// ignores any failure.
void Poke(const std::string& address) {
  std::string host;
  int port = 0;
  if (!ParseHostPort(address, &host, &port).ok()) return;
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return;
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    (void)connect(fd, found->ai_addr, found->ai_addrlen);
    close(fd);
  }
  freeaddrinfo(found);
}

}  // namespace

Metrics::~Metrics() { StopServing(); }

absl::StatusOr<std::string> Metrics::Serve(const std::string& listen) {
  std::string host;
  int port = 0;
  if (absl::Status parsed = ParseHostPort(listen, &host, &port); !parsed.ok()) return parsed;
  absl::MutexLock lock(&impl_->exposer_mu);
  // civetweb takes "HOST:PORT" for IPv4 and "[HOST]:PORT" for IPv6, as we do. Its errors
  // go to the log; the exception says only that it could not start.
  CivetCallbacks callbacks;
  callbacks.log_message = [](const mg_connection*, const char* message) {
    LogError(absl::StrCat("metrics endpoint: ", message));
    return 1;
  };
  // civetweb gives each connection a thread until its request is read. With one thread and
  // the default 30 s read timeout, one idle TCP connection held every scrape for 30 s: so
  // kMetricsThreads threads, and a request must arrive whole within kMetricsRequestTimeout
  // (a scrape sends its few hundred bytes at once). Keep-alive stays off, so an idle
  // scraper holds no thread between scrapes.
  constexpr int kMetricsThreads = 16;
  constexpr int kMetricsRequestTimeoutMs = 2000;
  std::vector<std::string> options = {"listening_ports",    listen,
                                      "num_threads",        std::to_string(kMetricsThreads),
                                      "request_timeout_ms", std::to_string(kMetricsRequestTimeoutMs),
                                      "enable_keep_alive",  "no"};
  try {
    impl_->exposer = std::make_unique<prometheus::Exposer>(std::move(options), &callbacks);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen, " (in use, or not a local address?): ", e.what()));
  }
  impl_->exposer->RegisterCollectable(impl_->registry);
  impl_->exposer->RegisterCollectable(impl_->scrape);
  const std::vector<int> ports = impl_->exposer->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen));
  impl_->address = absl::StrCat(host, ":", ports.front());
  return impl_->address;
}

void Metrics::StopServing() {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string address;
  {
    absl::MutexLock lock(&impl_->exposer_mu);
    exposer = std::move(impl_->exposer);
    address = impl_->address;
  }
  if (exposer == nullptr) return;
  // civetweb's master thread waits in poll() on its listening socket for up to 2 s before
  // it sees mg_stop's flag, so every shutdown took 2 s. Connections (closed at once) to the
  // port until the exposer is gone wake it: the exit takes milliseconds.
  std::atomic<bool> stopped{false};
  std::thread waker([&stopped, &address] {
    while (!stopped.load()) {
      Poke(address);
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  exposer.reset();  // joins the HTTP threads, outside the lock
  stopped = true;
  waker.join();
}

void Metrics::SetSnapshotSource(std::function<MetricsSnapshot()> source) {
  impl_->scrape->SetSource(std::move(source));
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> Metrics::MakeInterceptorFactory() {
  return std::make_unique<InterceptorFactory>(impl_);
}

void Metrics::ObserveBatch(int64_t rows, absl::Duration compute) {
  impl_->batch_rows->Observe(static_cast<double>(rows));
  impl_->batch_compute->Observe(absl::ToDoubleSeconds(compute));
}

void Metrics::ObserveKernel(const char* kernel) {
  for (auto& [name, counter] : impl_->kernels) {
    if (name == kernel) {
      counter->Increment();
      return;
    }
  }
}

void Metrics::ObserveRequest(absl::string_view service, absl::string_view method, absl::StatusCode code,
                             absl::Duration duration) {
  const MethodMetrics& m = impl_->For(absl::StrCat("/", service, "/", method));
  const int c = static_cast<int>(code);
  m.requests[static_cast<size_t>(c >= 0 && c < kNumCodes ? c : 2)]->Increment();
  m.duration->Observe(absl::ToDoubleSeconds(duration));
}

void Metrics::ObserveQueueWait(absl::Duration wait) { impl_->queue_wait->Observe(absl::ToDoubleSeconds(wait)); }

void Metrics::ObserveInferencePhases(absl::Duration decode, absl::Duration validate, absl::Duration encode) {
  impl_->phase_decode->Observe(absl::ToDoubleSeconds(decode));
  impl_->phase_validate->Observe(absl::ToDoubleSeconds(validate));
  impl_->phase_encode->Observe(absl::ToDoubleSeconds(encode));
}

void Metrics::ObserveStore(StoreOperation operation, bool ok) {
  impl_->store_ops[static_cast<size_t>(operation)][ok ? 1 : 0]->Increment();
}

void Metrics::ObserveSetUnload(bool memory) { impl_->set_unloads[memory ? 0 : 1]->Increment(); }

void Metrics::SetStoreLoadTime(absl::Duration load) { impl_->store_load_seconds->Set(absl::ToDoubleSeconds(load)); }

}  // namespace lstmserve::server
