// The load generator behind `lstmserve-cli bench` (like ghz or perf_analyzer).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "lstmserve/client/client.h"

namespace lstmserve::client {

struct BenchOptions {
  ClientOptions connection;  // target, TLS, token
  // step | run | session | infer (the Open Inference Protocol's ModelInfer of one step,
  // INPUT [1, B, I]: the same work as step)
  std::string rpc = "step";
  std::string set_id;  // created from the template below when it does not exist
  int64_t layers = 2, input_size = 64, hidden_size = 64;
  int64_t batch = 1;                            // B of every request
  int64_t steps = 10;                           // T of run requests
  int concurrency = 1;                          // callers (threads), each with one call in flight
  absl::Duration duration = absl::Seconds(10);  // measured window, after the warm-up
  int64_t requests = 0;                         // stop after this many measured requests (0: by duration)
  absl::Duration warmup = absl::Seconds(1);
  double rate = 0;                      // total requests per second (open loop); 0: closed loop
  std::string client_api = "callback";  // closed loop: callback (gRPC's threads) | sync (a thread per caller)
  absl::Duration timeout = absl::Seconds(30);
};

struct BenchReport {
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // by status code name
  double seconds = 0;                     // measured window
  double requests_per_second = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0, mean_ms = 0;

  std::string ToJson(const BenchOptions& options) const;
  std::string ToText(const BenchOptions& options) const;
};

absl::StatusOr<BenchReport> RunBench(const BenchOptions& options);

}  // namespace lstmserve::client
