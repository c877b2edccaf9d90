// The HTTP infer request's JSON decoder (oip::ParseHttpInfer: nlohmann's SAX parser, the
// numbers straight into the tensor's bytes, memory bounded) against the decoder it replaced
// (nlohmann's DOM, then the numbers walked into doubles, then encoded), in MB/s of body.
// Prints figures; never passes or fails on time.
//   build/tests/bench/lstmserve-json-bench
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "lstmserve/server/oip/oip_json.h"

namespace {

using json = nlohmann::json;

// An infer request of T x B x I float32 values, flat or nested as its shape.
std::string Body(int t, int b, int i, bool nested) {
  std::mt19937 random(1);
  std::normal_distribution<float> normal;
  std::string data;
  for (int s = 0; s < t; ++s) {
    if (nested) absl::StrAppend(&data, s ? "," : "", "[");
    for (int r = 0; r < b; ++r) {
      if (nested) absl::StrAppend(&data, r ? "," : "", "[");
      for (int k = 0; k < i; ++k) {
        const bool first = nested ? k == 0 : (s == 0 && r == 0 && k == 0);
        absl::StrAppend(&data, first ? "" : ",", json(normal(random)).dump());
      }
      if (nested) data += "]";
    }
    if (nested) data += "]";
  }
  return absl::StrCat(R"({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [)", t, ",", b, ",", i,
                      R"(], "data": [)", data, "]}]}");
}

// The decoder before: the whole DOM, then the numbers into doubles, then into float32 bytes.
void Flatten(const json& data, std::vector<double>* out) {
  if (data.is_number()) {
    out->push_back(data.get<double>());
    return;
  }
  for (const json& item : data) Flatten(item, out);
}
std::string DomDecode(const std::string& body) {
  const json doc = json::parse(body);
  std::vector<double> values;
  Flatten(doc["inputs"][0]["data"], &values);
  std::string bytes;
  for (double v : values) {
    const float f = static_cast<float>(v);
    bytes.append(reinterpret_cast<const char*>(&f), 4);
  }
  return bytes;
}

void Run(benchmark::State& state, bool sax) {
  const std::string body =
      Body(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), 64, state.range(2) != 0);
  for (auto _ : state) {
    if (sax) {
      auto parsed = lstmserve::server::oip::ParseHttpInfer(body, nullptr);
      if (!parsed.ok()) state.SkipWithError(std::string(parsed.status().message()).c_str());
      benchmark::DoNotOptimize(parsed);
    } else {
      benchmark::DoNotOptimize(DomDecode(body));
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(body.size()));
  state.counters["body_kB"] = static_cast<double>(body.size()) / 1e3;
}

void BM_Sax(benchmark::State& state) { Run(state, true); }
void BM_Dom(benchmark::State& state) { Run(state, false); }
// {T, B, nested}, I = 64: one step of one sequence, 100 steps of 8, nested the same.
BENCHMARK(BM_Sax)->Args({1, 1, 0})->Args({100, 8, 0})->Args({100, 8, 1})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Dom)->Args({1, 1, 0})->Args({100, 8, 0})->Args({100, 8, 1})->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
