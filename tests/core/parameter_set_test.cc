// Parameter-set specs: validation rules, draw order, dtype/device rules, concurrency.
#include "lstmserve/core/parameter_set.h"

#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "lstmserve/core/device.h"

namespace lstmserve::core {
namespace {

ParameterSetSpec LstmSpec(int64_t layers, int64_t input, int64_t hidden, uint64_t seed = 1) {
  ParameterSetSpec spec;
  spec.lstm = LstmTemplate{};
  spec.lstm->num_layers = layers;
  spec.lstm->input_size = input;
  spec.lstm->hidden_size = hidden;
  spec.seed = seed;
  return spec;
}

void ExpectError(absl::StatusCode code, const ParameterSetSpec& spec, const std::string& part,
                 const CreateLimits& limits = {}) {
  auto set = CreateParameterSet(spec, limits);
  EXPECT_EQ(set.status().code(), code) << part;
  EXPECT_NE(set.status().message().find(part), std::string::npos) << "expected '" << part << "' in: " << set.status();
}

void ExpectInvalid(const ParameterSetSpec& spec, const std::string& part, const CreateLimits& limits = {}) {
  ExpectError(absl::StatusCode::kInvalidArgument, spec, part, limits);
}

void ExpectOverLimit(const ParameterSetSpec& spec, const std::string& part, const CreateLimits& limits) {
  ExpectError(absl::StatusCode::kResourceExhausted, spec, part, limits);
}

TEST(ParameterSetTest, TemplateLayoutAndByteSize) {
  auto spec = LstmSpec(3, 10, 20);
  spec.lstm->bias = true;
  auto set = CreateParameterSet(spec, {});
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->tensors.size(), 6u);
  EXPECT_EQ(set->tensors[0].name, "w_0");
  EXPECT_EQ(set->tensors[0].value.sizes(), (at::IntArrayRef{30, 80}));
  EXPECT_EQ(set->tensors[1].value.sizes(), (at::IntArrayRef{40, 80}));
  EXPECT_EQ(set->tensors[3].name, "b_0");
  EXPECT_EQ(set->byte_size, 4 * (30 * 80 + 2 * 40 * 80 + 3 * 80));
  EXPECT_TRUE(at::all(set->tensors[3].value == 0).item<bool>());
}

TEST(ParameterSetTest, TemplateEqualsItsExpandedTensorList) {
  // The documented draw order: a list spec with the expanded tensors gives the same bits.
  auto spec = LstmSpec(2, 7, 5, 99);
  spec.lstm->bias = true;
  spec.lstm->bias_init = Initializer::Uniform(-0.1, 0.1);  // draws after all weights
  ParameterSetSpec list;
  list.tensors = ExpandLstmTemplate(*spec.lstm);
  list.seed = 99;
  auto a = CreateParameterSet(spec, {});
  auto b = CreateParameterSet(list, {});
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->tensors.size(), b->tensors.size());
  for (size_t i = 0; i < a->tensors.size(); ++i) {
    EXPECT_EQ(a->tensors[i].name, b->tensors[i].name);
    EXPECT_TRUE(at::equal(a->tensors[i].value, b->tensors[i].value)) << a->tensors[i].name;
  }
}

TEST(ParameterSetTest, DifferentSeedsDifferAndOnlyLow32BitsMatter) {
  auto a = CreateParameterSet(LstmSpec(1, 4, 4, 1), {});
  auto b = CreateParameterSet(LstmSpec(1, 4, 4, 2), {});
  auto c = CreateParameterSet(LstmSpec(1, 4, 4, (uint64_t{1} << 32) + 1), {});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_FALSE(at::equal(a->tensors[0].value, b->tensors[0].value));
  EXPECT_TRUE(at::equal(a->tensors[0].value, c->tensors[0].value));
}

TEST(ParameterSetTest, ConcurrentCreationsGiveTheSameBitsAsASerialOne) {
  const auto spec = LstmSpec(2, 64, 64, 42);
  auto serial = CreateParameterSet(spec, {});
  ASSERT_TRUE(serial.ok());
  std::vector<ParameterSet> results(6);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      // Other seeds interleaved on the same threads must not disturb anything.
      for (int k = 0; k < 5; ++k) (void)CreateParameterSet(LstmSpec(2, 64, 64, 1000 + i * 10 + k), {});
      results[i] = *CreateParameterSet(spec, {});
      at::manual_seed(i);  // and neither must the process-wide generator
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    for (size_t t = 0; t < r.tensors.size(); ++t) {
      EXPECT_TRUE(at::equal(r.tensors[t].value, serial->tensors[t].value));
    }
  }
}

TEST(ParameterSetValidationTest, SizesMustBePositiveAndNotOverflow) {
  ExpectInvalid(LstmSpec(0, 4, 4), "num_layers must be >= 1");
  ExpectInvalid(LstmSpec(1, -3, 4), "input_size must be >= 1");
  ExpectInvalid(LstmSpec(1, 4, 0), "hidden_size must be >= 1");
  ExpectInvalid(LstmSpec(1, 4, int64_t{1} << 62), "overflow");
  ParameterSetSpec spec;
  spec.tensors.push_back({"w", {4, 0}, Initializer::Zeros()});
  ExpectInvalid(spec, "dimension 1 has size 0");
  spec.tensors[0].shape = {4, -2};
  ExpectInvalid(spec, "dimension 1 has size -2");
  spec.tensors[0].shape = {int64_t{1} << 31, int64_t{1} << 31, 4};
  ExpectInvalid(spec, "overflows int64");
  spec.tensors[0].shape = {};
  ExpectInvalid(spec, "at least 1 dimension");
  spec.tensors[0].shape = std::vector<int64_t>(9, 1);
  ExpectInvalid(spec, "rank 9 exceeds");
}

TEST(ParameterSetValidationTest, ExactlyOneOfTemplateOrTensors) {
  ExpectInvalid(ParameterSetSpec{}, "exactly one of");
  auto spec = LstmSpec(1, 2, 2);
  spec.tensors.push_back({"w", {2, 2}, Initializer::Zeros()});
  ExpectInvalid(spec, "exactly one of");
}

TEST(ParameterSetValidationTest, NamesMustBeValidAndUnique) {
  ParameterSetSpec spec;
  spec.tensors = {{"a", {2}, Initializer::Zeros()}, {"a", {3}, Initializer::Ones()}};
  ExpectInvalid(spec, "used twice");
  spec.tensors = {{"", {2}, Initializer::Zeros()}};
  ExpectInvalid(spec, "must not be empty");
  spec.tensors = {{"../x", {2}, Initializer::Zeros()}};
  ExpectInvalid(spec, "contains '..'");
  spec.tensors = {{"a b", {2}, Initializer::Zeros()}};
  ExpectInvalid(spec, "outside [A-Za-z0-9_.:/-]");
  spec.tensors = {{std::string(200, 'x'), {2}, Initializer::Zeros()}};
  ExpectInvalid(spec, "longer than 128");
  spec.tensors = {{"encoder/layer.0:weight-1", {2}, Initializer::Zeros()}};
  EXPECT_TRUE(CreateParameterSet(spec, {}).ok());
}

TEST(ParameterSetValidationTest, LimitsOnBytesTensorsAndLayers) {
  CreateLimits limits;
  limits.max_set_bytes = 4 * 100;
  ParameterSetSpec spec;
  spec.tensors = {{"a", {10, 10}, Initializer::Zeros()}};
  EXPECT_TRUE(CreateParameterSet(spec, limits).ok()) << "exactly at the limit is allowed";
  spec.tensors.push_back({"b", {1}, Initializer::Zeros()});
  ExpectOverLimit(spec, "exceed the limit of 400 bytes", limits);
  limits = {};
  limits.max_tensors = 2;
  ExpectOverLimit(LstmSpec(3, 2, 2), "limit is 2", limits);
  limits = {};
  limits.max_layers = 4;
  ExpectOverLimit(LstmSpec(5, 2, 2), "exceeds the limit of 4", limits);
}

TEST(ParameterSetValidationTest, InitializerErrorsNameTheTensor) {
  ParameterSetSpec spec;
  spec.tensors = {{"bias", {8}, Initializer::KaimingNormal()}};
  ExpectInvalid(spec, "tensor 'bias': kaiming_normal: fan_in and fan_out need");
  auto lstm = LstmSpec(1, 2, 2);
  lstm.lstm->bias = true;
  lstm.lstm->bias_init = Initializer::Orthogonal();
  ExpectInvalid(lstm, "tensor 'b_0': orthogonal needs");
}

TEST(ParameterSetValidationTest, ReducedPrecisionNeedsCuda) {
  auto spec = LstmSpec(1, 2, 2);
  spec.dtype = DType::kBFloat16;
  ExpectInvalid(spec, "bfloat16 is supported on CUDA only");
}

TEST(DeviceTest, ResolvesNamesAndRefusesCudaWithoutIt) {
  EXPECT_TRUE(ResolveDevice("cpu")->is_cpu());
  EXPECT_EQ(ResolveDevice("tpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveDevice("cuda:x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveDevice("cuda:-1").status().code(), absl::StatusCode::kInvalidArgument);
  if (CudaAvailable()) {
    EXPECT_TRUE(ResolveDevice("cuda")->is_cuda());
    EXPECT_TRUE(ResolveDevice("auto")->is_cuda());
    EXPECT_EQ(ResolveDevice("cuda:127").status().code(), absl::StatusCode::kOutOfRange);
  } else {
    EXPECT_TRUE(ResolveDevice("auto")->is_cpu());
    auto cuda = ResolveDevice("cuda:0");
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(cuda.status().message().find("no CUDA"), std::string::npos) << cuda.status();
  }
  EXPECT_EQ(*ParseDType("bf16"), DType::kBFloat16);
  EXPECT_EQ(ParseDType("int8").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GpuParameterSetTest, CudaSetEqualsCpuSetMovedToTheDevice) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device in this build or machine";
  auto spec = LstmSpec(2, 16, 32, 5);
  auto cpu = CreateParameterSet(spec, {});
  auto gpu = CreateParameterSet(spec, {}, *ResolveDevice("cuda"));
  ASSERT_TRUE(cpu.ok() && gpu.ok()) << gpu.status();
  EXPECT_TRUE(gpu->tensors[0].value.is_cuda());
  EXPECT_TRUE(at::equal(gpu->tensors[0].value.cpu(), cpu->tensors[0].value));
  spec.dtype = DType::kBFloat16;
  auto bf16 = CreateParameterSet(spec, {}, *ResolveDevice("cuda"));
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->tensors[0].value.scalar_type(), at::kBFloat16);
  EXPECT_EQ(bf16->byte_size, cpu->byte_size / 2);
}

}  // namespace
}  // namespace lstmserve::core
