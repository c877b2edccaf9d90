// Reduced weight storage (bfloat16, int8 with per-column scales): the rounding rules, the
// layout checks, the kernels that read the weights as stored, and the error against the
// float32 set after 1, 100 and 1,000 steps, bounded. Also the packed float32 GEMM, which
// shares the packed GEMMs' layout and drivers, and its bits per row and per level.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "lstm_kernels.h"
#include "lstm_spec.h"
#include "lstmserve/core/isa.h"
#include "lstmserve/core/parameter_set.h"
#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/core/store.h"

namespace lstmserve::core {
namespace {

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Whether kBlas runs the storage on the packed GEMMs on this CPU.
bool Packed(WeightStorage storage) {
  return storage == WeightStorage::kInt8 ? kernels::HasPackedInt8() : kernels::HasPackedBf16();
}

TEST(WeightStorageTest, ParsesPathNames) {
  for (LstmPath path : {LstmPath::kAuto, LstmPath::kSmallBatch, LstmPath::kBlas, LstmPath::kGeneric, LstmPath::kOneDnn,
                        LstmPath::kCudaFused, LstmPath::kCudaGemm}) {
    EXPECT_EQ(*ParseLstmPath(LstmPathName(path)), path);
  }
  const auto bad = ParseLstmPath("fastest");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("small_batch"), std::string::npos);
  // A float32 set names its path: the packed float32 GEMM at every batch with AVX2 or
  // AVX-512; below, the small-batch kernels at B = 1 (no FMA), then BLAS or oneDNN.
  StackedLstm lstm = *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(2, 7, 16, true, 3), {}));
  if (kernels::HasPackedF32()) {
    for (int64_t batch : {1, 4, 5, 64}) EXPECT_EQ(lstm.KernelName(batch, 1), std::string("packed_f32")) << batch;
    EXPECT_EQ(lstm.KernelName(64, 100), std::string("packed_f32"));
    EXPECT_EQ(lstm.KernelName(1, 1, LstmPath::kSmallBatch), std::string("small_batch"));
    EXPECT_EQ(lstm.KernelName(64, 100, LstmPath::kOneDnn), std::string("onednn"));
  } else {
    EXPECT_EQ(lstm.KernelName(1, 1), std::string("small_batch"));
    EXPECT_EQ(lstm.KernelName(4, 1), std::string("blas"));
    EXPECT_EQ(lstm.KernelName(64, 100), std::string(OneDnnLstmAvailable() ? "onednn" : "blas"));
    EXPECT_EQ(lstm.KernelName(64, 1), std::string("blas"));
  }
  // The startup log line says what this CPU runs.
  const std::string kernels_line = DescribeCpuKernels();
  const char* int8 = kernels::HasPackedInt8Vnni()      ? "AVX512-VNNI"
                     : kernels::HasPackedInt8AvxVnni() ? "AVX-VNNI"
                     : kernels::HasPackedInt8()        ? "AVX2"
                                                       : "no";
  EXPECT_NE(kernels_line.find(std::string("packed int8 GEMM ") + int8 + ";"), std::string::npos) << kernels_line;
  const char* bf16 = kernels::HasPackedBf16Avx512()    ? "AVX512-BF16"
                     : kernels::HasPackedBf16Widened() ? "AVX-512 widened"
                     : kernels::HasPackedBf16()        ? "AVX2"
                                                       : "no";
  EXPECT_NE(kernels_line.find(std::string("packed bf16 GEMM ") + bf16 + ";"), std::string::npos) << kernels_line;
  const char* f32 = kernels::HasPackedF32Avx512() ? "AVX-512" : kernels::HasPackedF32() ? "AVX2" : "no";
  EXPECT_NE(kernels_line.find(std::string("packed f32 GEMM ") + f32 + ";"), std::string::npos) << kernels_line;
}

TEST(WeightStorageTest, ParsesNames) {
  EXPECT_EQ(*ParseWeightStorage(""), WeightStorage::kDType);
  EXPECT_EQ(*ParseWeightStorage("bf16"), WeightStorage::kBFloat16);
  EXPECT_EQ(*ParseWeightStorage("INT8"), WeightStorage::kInt8);
  EXPECT_EQ(ParseWeightStorage("int4").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WeightStorageName(WeightStorage::kInt8), "int8");
}

TEST(WeightStorageTest, RoundsAsDocumented) {
  ParameterSet full = *CreateParameterSet(TestLstmSpec(2, 5, 8, true, 11), {});
  ParameterSet bf16 = *CreateParameterSet(TestLstmSpec(2, 5, 8, true, 11, WeightStorage::kBFloat16), {});
  ParameterSet int8 = *CreateParameterSet(TestLstmSpec(2, 5, 8, true, 11, WeightStorage::kInt8), {});
  ASSERT_EQ(bf16.tensors.size(), 4u);
  ASSERT_EQ(int8.tensors.size(), 6u);
  // Order: weights, (scales,) biases.
  EXPECT_EQ(int8.tensors[0].name, "w_0");
  EXPECT_EQ(int8.tensors[1].name, "w_1");
  EXPECT_EQ(int8.tensors[2].name, "w_0.scale");
  EXPECT_EQ(int8.tensors[3].name, "w_1.scale");
  EXPECT_EQ(int8.tensors[4].name, "b_0");
  EXPECT_EQ(int8.weight_storage, WeightStorage::kInt8);
  EXPECT_EQ(int8.dtype, DType::kFloat32);
  for (int l = 0; l < 2; ++l) {
    const at::Tensor w = *full.Find(LstmWeightName(l));
    EXPECT_TRUE(bf16.Find(LstmWeightName(l))->equal(w.to(at::kBFloat16)));
    // Written out by hand: the largest |w| of each column maps to +-127.
    const at::Tensor q = *int8.Find(LstmWeightName(l));
    const at::Tensor scale = *int8.Find(LstmScaleName(l));
    ASSERT_EQ(q.scalar_type(), at::kChar);
    for (int64_t j = 0; j < w.size(1); ++j) {
      float largest = 0;
      for (int64_t k = 0; k < w.size(0); ++k) largest = std::max(largest, std::abs(w[k][j].item<float>()));
      EXPECT_EQ(scale[j].item<float>(), largest / 127.0f);
      for (int64_t k = 0; k < w.size(0); ++k) {
        EXPECT_EQ(q[k][j].item<int8_t>(),
                  static_cast<int8_t>(std::nearbyint(w[k][j].item<float>() / (largest / 127.0f))));
      }
    }
    // Biases are not reduced.
    EXPECT_TRUE(int8.Find(LstmBiasName(l))->equal(*full.Find(LstmBiasName(l))));
  }
  EXPECT_EQ(bf16.byte_size, (13 * 32 + 16 * 32) * 2 + 2 * 32 * 4);
  EXPECT_EQ(int8.byte_size, (13 * 32 + 16 * 32) + 2 * 32 * 4 + 2 * 32 * 4);
}

TEST(WeightStorageTest, AZeroColumnGetsScaleZero) {
  ParameterSet full;
  full.tensors.push_back({"w_0", at::zeros({3, 4})});
  full.tensors[0].value[0][1] = 2.0f;
  ParameterSet int8 = *ReduceWeights(full, WeightStorage::kInt8);
  EXPECT_EQ((*int8.Find("w_0.scale"))[0].item<float>(), 0.0f);
  EXPECT_EQ((*int8.Find("w_0"))[0][1].item<int8_t>(), 127);
  EXPECT_EQ((*int8.Find("w_0")).abs().sum().item<int64_t>(), 127);
}

TEST(WeightStorageTest, RefusesWhatItCannotStore) {
  ParameterSetSpec list;
  list.tensors.push_back({"w", {4, 4}, Initializer::DefaultWeight()});
  list.weight_storage = WeightStorage::kInt8;
  auto s = CreateParameterSet(list, {});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("not tensor lists"), std::string::npos) << s.status();
  ParameterSetSpec half = TestLstmSpec(1, 2, 2, false, 1, WeightStorage::kBFloat16);
  half.dtype = DType::kFloat16;
  EXPECT_EQ(CreateParameterSet(half, {}).status().code(), absl::StatusCode::kInvalidArgument);
  // int8 is a storage, not a set dtype.
  ParameterSetSpec int8_dtype = TestLstmSpec(1, 2, 2, false, 1);
  int8_dtype.dtype = DType::kInt8;
  EXPECT_EQ(CreateParameterSet(int8_dtype, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightStorageTest, ValidateNamesTheFirstMismatch) {
  ParameterSet int8 = *CreateParameterSet(TestLstmSpec(2, 3, 4, true, 5, WeightStorage::kInt8), {});
  ASSERT_TRUE(ValidateWeightStorage(int8).ok());
  ParameterSet no_scale = int8;
  no_scale.tensors.erase(no_scale.tensors.begin() + 3);  // w_1.scale
  auto s = ValidateWeightStorage(no_scale);
  EXPECT_NE(s.message().find("w_1.scale"), std::string::npos) << s;
  ParameterSet negative = int8;
  negative.tensors[2].value = -negative.tensors[2].value;
  EXPECT_FALSE(ValidateWeightStorage(negative).ok());
  ParameterSet nan_scale = int8;
  nan_scale.tensors[2].value = nan_scale.tensors[2].value.clone();
  nan_scale.tensors[2].value[0] = std::nanf("");
  EXPECT_FALSE(ValidateWeightStorage(nan_scale).ok());
  ParameterSet float_weight = int8;
  float_weight.tensors[1].value = float_weight.tensors[1].value.to(at::kFloat);
  EXPECT_FALSE(ValidateWeightStorage(float_weight).ok());
  ParameterSet int8_bias = int8;
  int8_bias.tensors[4].value = int8_bias.tensors[4].value.to(at::kChar);
  EXPECT_FALSE(ValidateWeightStorage(int8_bias).ok());
  ParameterSet mixed = *CreateParameterSet(TestLstmSpec(1, 3, 4, true, 5), {});
  mixed.tensors[0].value = mixed.tensors[0].value.to(at::kBFloat16);
  EXPECT_FALSE(ValidateWeightStorage(mixed).ok()) << "mixed dtypes without a weight storage";
}

TEST(WeightStorageTest, SafetensorsKeepTheStorageAndRefuseABrokenLayout) {
  for (WeightStorage storage : {WeightStorage::kBFloat16, WeightStorage::kInt8}) {
    StoredSet stored;
    stored.id = "q";
    stored.set = *CreateParameterSet(TestLstmSpec(2, 3, 4, true, 5, storage), {});
    stored.checksum = ComputeChecksum(stored.set);
    const std::string bytes = *EncodeSafetensors(stored);
    auto back = DecodeSafetensors(bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->set.weight_storage, storage);
    EXPECT_EQ(back->set.dtype, DType::kFloat32);
    EXPECT_EQ(ComputeChecksum(back->set), stored.checksum);
    for (size_t i = 0; i < stored.set.tensors.size(); ++i) {
      EXPECT_TRUE(back->set.tensors[i].value.equal(stored.set.tensors[i].value)) << stored.set.tensors[i].name;
    }
    // The same tensors without the storage in the metadata (the key renamed, same length):
    // refused as a set of mixed dtypes, not guessed.
    std::string stripped = bytes;
    const size_t at = stripped.find("lstmserve.weight_storage");
    ASSERT_NE(at, std::string::npos);
    stripped[at + 10] = 'W';
    auto refused = DecodeSafetensors(stripped);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss) << refused.status();
  }
}

// The kernels on reduced weights compute a @ dequantized(w) up to float32 rounding: the
// small-batch path (which reads the weights as stored) against the BLAS path (which widens
// them) and the generic one, at batch sizes and hidden sizes that exercise every block.
TEST(WeightStorageTest, EveryPathAgreesOnReducedWeights) {
  for (WeightStorage storage : {WeightStorage::kBFloat16, WeightStorage::kInt8}) {
    for (int64_t hidden : {3, 16, 40, 64, 200}) {
      StackedLstm lstm =
          *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(2, 7, hidden, true, hidden, storage), {}));
      EXPECT_EQ(lstm.weight_storage(), storage);
      EXPECT_EQ(lstm.scalar_type(), at::kFloat);
      for (int64_t batch : {1, 3, 6}) {
        at::Generator gen = at::detail::createCPUGenerator(batch);
        const at::Tensor x = at::empty({5, batch, 7}).normal_(0, 1, gen);
        auto small = lstm.Run(x, {}, true, LstmPath::kSmallBatch);
        auto blas = lstm.Run(x, {}, true, LstmPath::kBlas);
        auto generic = lstm.Run(x, {}, true, LstmPath::kGeneric);
        ASSERT_TRUE(small.ok() && blas.ok() && generic.ok()) << small.status() << blas.status() << generic.status();
        // kBlas rounds the activations where it runs the packed GEMMs (PackedGemmsMatchTheirDefinition).
        const double blas_tolerance = Packed(storage) ? 3e-3 : 2e-5;
        EXPECT_LT(MaxAbsDiff(small->outputs, blas->outputs), blas_tolerance)
            << WeightStorageName(storage) << " H=" << hidden;
        EXPECT_LT(MaxAbsDiff(small->outputs, generic->outputs), 2e-5) << WeightStorageName(storage) << " H=" << hidden;
        auto step = lstm.Step(x[0], {});
        ASSERT_TRUE(step.ok());
        // Auto takes the packed GEMMs at every batch size where the CPU has them.
        EXPECT_TRUE(at::allclose(step->h.back(), blas->outputs[0], 0, 2e-6)) << WeightStorageName(storage);
        EXPECT_TRUE(at::allclose(step->h.back(), small->outputs[0], 0, blas_tolerance));
        // A row's bits do not depend on the rows beside it where the packed GEMMs run (each
        // row rounded and summed on its own). Without them (below x86-64-v3), kBlas widens
        // the weights and BLAS may sum a row of a larger batch in another order, so there
        // the promise is float32's: within 1e-6, as for a float32 set (README).
        auto alone = lstm.Run(x.narrow(1, batch - 1, 1).contiguous(), {}, true, LstmPath::kBlas);
        ASSERT_TRUE(alone.ok());
        if (Packed(storage)) {
          EXPECT_TRUE(alone->outputs.equal(blas->outputs.narrow(1, batch - 1, 1))) << WeightStorageName(storage);
        } else {
          EXPECT_LT(MaxAbsDiff(alone->outputs, blas->outputs.narrow(1, batch - 1, 1)), 1e-6)
              << WeightStorageName(storage) << " H=" << hidden << " B=" << batch;
        }
      }
      // What auto runs, by name (lstmserve_batch_kernel_total), and what a forced path runs.
      const std::string packed = storage == WeightStorage::kInt8 ? "packed_int8" : "packed_bf16";
      EXPECT_EQ(lstm.KernelName(1, 1), Packed(storage) ? packed : "small_batch");
      EXPECT_EQ(lstm.KernelName(64, 1), Packed(storage) ? packed : "blas_widened");
      EXPECT_EQ(lstm.KernelName(64, 1, LstmPath::kSmallBatch), std::string("small_batch"));
      // oneDNN's LSTM runs on the weights widened for the call, layer by layer; auto takes it
      // for long sequences of large batches where no packed GEMM serves the set.
      at::Generator gen = at::detail::createCPUGenerator(4);
      const at::Tensor long_x = at::empty({20, 40, 7}).normal_(0, 1, gen);
      LstmState state;
      for (int64_t l = 0; l < 2; ++l) {
        state.h.push_back(at::empty({40, hidden}).normal_(0, 0.5, gen));
        state.c.push_back(at::empty({40, hidden}).normal_(0, 0.5, gen));
      }
      auto onednn = lstm.Run(long_x, state, true, LstmPath::kOneDnn);
      if (OneDnnLstmAvailable()) {
        ASSERT_TRUE(onednn.ok()) << onednn.status();
        auto generic = lstm.Run(long_x, state, true, LstmPath::kGeneric);
        ASSERT_TRUE(generic.ok()) << generic.status();
        EXPECT_LT(MaxAbsDiff(onednn->outputs, generic->outputs), 2e-5) << WeightStorageName(storage) << " H=" << hidden;
        for (int64_t l = 0; l < 2; ++l) {
          EXPECT_LT(MaxAbsDiff(onednn->final_state.c[l], generic->final_state.c[l]), 2e-5);
          EXPECT_LT(MaxAbsDiff(onednn->final_state.h[l], generic->final_state.h[l]), 2e-5);
        }
        EXPECT_EQ(lstm.KernelName(40, 20), Packed(storage) ? packed : "onednn");
      } else {
        EXPECT_EQ(onednn.status().code(), absl::StatusCode::kFailedPrecondition) << onednn.status();
      }
    }
  }
}

// The layouts a set's paths derive from its weights on first use are counted, once, and
// reported to the listener (the server's registry counts them against
// --max_total_set_bytes): oneDNN's reordered float32 weights, the packed GEMMs' weights, a
// small reduced set's float32 copy.
TEST(WeightStorageTest, DerivedLayoutsAreCountedOnceAndReported) {
  const int64_t input = 7, hidden = 16, layers = 2;
  const int64_t weights = (input + hidden) * 4 * hidden + (hidden + hidden) * 4 * hidden;
  const at::Tensor x = at::ones({20, 40, input});
  for (WeightStorage storage : {WeightStorage::kDType, WeightStorage::kBFloat16, WeightStorage::kInt8}) {
    StackedLstm lstm =
        *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(layers, input, hidden, true, 3, storage), {}));
    int64_t reported = 0, reports = 0;
    lstm.SetDerivedBytesListener([&](int64_t bytes) {
      reported += bytes;
      ++reports;
    });
    EXPECT_EQ(lstm.DerivedBytes(), 0);
    // The small-batch kernels and the generic path derive nothing from a float32 set.
    ASSERT_TRUE(lstm.Run(x.narrow(1, 0, 1), {}, true, LstmPath::kGeneric).ok());
    if (storage == WeightStorage::kDType) {
      ASSERT_TRUE(lstm.Run(x.narrow(1, 0, 1), {}, true, LstmPath::kSmallBatch).ok());
      EXPECT_EQ(lstm.DerivedBytes(), 0);
    }
    int64_t expected = 0;
    LstmPath path = LstmPath::kBlas;
    if (storage == WeightStorage::kDType && kernels::HasPackedF32()) {
      // The packed float32 weights: 4 bytes per weight (4H = 64 columns: whole panels).
      expected = weights * 4;
      ASSERT_TRUE(lstm.Run(x, {}, true, LstmPath::kBlas).ok());
    } else if (storage == WeightStorage::kDType) {
      if (!OneDnnLstmAvailable()) continue;
      // w_ih and w_hh per layer as float32, the bias and at::lstm's zero second bias.
      expected = weights * 4 + layers * 2 * 4 * hidden * 4;
      path = LstmPath::kOneDnn;
      ASSERT_TRUE(lstm.Run(x, {}, true, path).ok());
    } else {
      ASSERT_TRUE(lstm.Run(x, {}, true, LstmPath::kBlas).ok());
      if (Packed(storage)) {
        // 1 or 2 bytes per weight, padded to the packing's groups (+ int32 column sums).
        const int64_t stored = weights * (storage == WeightStorage::kInt8 ? 1 : 2);
        EXPECT_GE(lstm.DerivedBytes(), stored) << WeightStorageName(storage);
        EXPECT_LE(lstm.DerivedBytes(), 3 * stored) << WeightStorageName(storage);
        expected = lstm.DerivedBytes();
      } else {
        expected = weights * 4;  // the widened copy
      }
    }
    EXPECT_EQ(lstm.DerivedBytes(), expected) << WeightStorageName(storage);
    EXPECT_EQ(reported, expected);
    EXPECT_EQ(reports, 1);
    // Made once: more calls, and copies of the object, share it.
    StackedLstm copy = lstm;
    ASSERT_TRUE(copy.Run(x, {}, true, path).ok());
    EXPECT_EQ(copy.DerivedBytes(), expected);
    EXPECT_EQ(reports, 1);
  }
}

// Each reduced kernel, the dispatched one (AVX-512 or AVX2 loads at those levels) and the
// portable build, against at::matmul on the widened weights, for every row remainder and
// column tail, and against each other bit for bit.
TEST(WeightStorageTest, EveryKernelBuildMatchesMatmulOnWidenedWeights) {
  at::Generator gen = at::detail::createCPUGenerator(21);
  for (int64_t rows : {1, 2, 3, 4, 5}) {
    for (int64_t n : {16, 200, 1040}) {
      const int64_t k = 70;
      const at::Tensor a = at::empty({rows, k}).normal_(0, 1, gen);
      const at::Tensor w = at::empty({k, n}).normal_(0, 0.1, gen);
      const at::Tensor bf16 = w.to(at::kBFloat16).contiguous();
      const at::Tensor scale = w.abs().amax(0) / 127;
      const at::Tensor q = at::round(w / scale).to(at::kChar).contiguous();
      const at::Tensor base = at::empty({rows, n}).normal_(0, 1, gen);
      const at::Tensor want_bf16 = base + at::matmul(a, bf16.to(at::kFloat));
      const at::Tensor want_int8 = base + at::matmul(a, q.to(at::kFloat) * scale);
      const auto* bits = reinterpret_cast<const uint16_t*>(bf16.data_ptr());
      at::Tensor got_bf16[2], got_int8[2];
      for (bool portable : {false, true}) {
        at::Tensor out = base.clone();
        (portable ? kernels::SmallGemmBf16Portable : kernels::SmallGemmBf16)(a.data_ptr<float>(), k, bits, n, k, n,
                                                                             out.data_ptr<float>(), n, rows, true);
        EXPECT_LT(MaxAbsDiff(out, want_bf16), 1e-4) << "bf16 rows " << rows << " n " << n << " portable " << portable;
        got_bf16[portable] = out;
        out = base.clone();
        (portable ? kernels::SmallGemmInt8Portable : kernels::SmallGemmInt8)(
            a.data_ptr<float>(), k, q.data_ptr<int8_t>(), scale.data_ptr<float>(), n, k, n, out.data_ptr<float>(), n,
            rows, true);
        EXPECT_LT(MaxAbsDiff(out, want_int8), 1e-4) << "int8 rows " << rows << " n " << n << " portable " << portable;
        got_int8[portable] = out;
        out = base.clone();
        kernels::SmallGemmInt8(a.data_ptr<float>(), k, q.data_ptr<int8_t>(), scale.data_ptr<float>(), n, k, n,
                               out.data_ptr<float>(), n, rows, false);
        EXPECT_LT(MaxAbsDiff(out, want_int8 - base), 1e-4) << "int8 (no accumulate) rows " << rows << " n " << n;
      }
      // The level's own loads (AVX-512 or AVX2) only widen differently: the same sums in the
      // same order, so the same bits as the portable build at that level.
      EXPECT_TRUE(at::equal(got_bf16[0], got_bf16[1])) << "bf16 rows " << rows << " n " << n;
      EXPECT_TRUE(at::equal(got_int8[0], got_int8[1])) << "int8 rows " << rows << " n " << n;
    }
  }
}

// The builds of the packed int8 GEMM, each run directly where this CPU can (whatever the
// cap): AVX512-VNNI and AVX-VNNI (unsigned bytes, qh + 128) and AVX2 (int16, qh).
enum class Int8Build { kAvx512Vnni, kAvxVnni, kAvx2 };
class PackedInt8Build {
 public:
  static std::vector<Int8Build> Available() {
    std::vector<Int8Build> builds;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    if (CpuIsaLevel() == IsaLevel::kAvx512 && __builtin_cpu_supports("avx512vnni")) {
      builds.push_back(Int8Build::kAvx512Vnni);
    }
    if (CpuIsaLevel() >= IsaLevel::kAvx2 && __builtin_cpu_supports("avxvnni")) builds.push_back(Int8Build::kAvxVnni);
    if (CpuIsaLevel() >= IsaLevel::kAvx2) builds.push_back(Int8Build::kAvx2);
#endif
    return builds;
  }
  static const char* Name(Int8Build build) {
    return build == Int8Build::kAvx512Vnni ? "vnni" : build == Int8Build::kAvxVnni ? "avx_vnni" : "avx2";
  }

  // Rounds a's rows in `terms` terms.
  PackedInt8Build(Int8Build build, const at::Tensor& a, int terms)
      : build_(build), terms_(terms), k_(a.size(1)), ldq_(kernels::RowStride(k_, kernels::kInt8Group)) {
    const int64_t rows = a.size(0);
    row_scale_ = at::empty({rows, terms});
    q_ = at::empty({rows, terms, ldq_}, bytes() ? at::kByte : at::kShort);
    if (build == Int8Build::kAvx512Vnni) {
      kernels::QuantizeRowsInt8Avx512(a.data_ptr<float>(), k_, rows, k_, terms, q_.data_ptr<uint8_t>(), ldq_,
                                      row_scale_.data_ptr<float>());
    } else if (build == Int8Build::kAvxVnni) {
      kernels::QuantizeRowsInt8Avx2(a.data_ptr<float>(), k_, rows, k_, terms, q_.data_ptr<uint8_t>(), ldq_,
                                    row_scale_.data_ptr<float>());
    } else {
      kernels::QuantizeRowsInt8Avx2(a.data_ptr<float>(), k_, rows, k_, terms, q_.data_ptr<int16_t>(), ldq_,
                                    row_scale_.data_ptr<float>());
    }
  }
  // The rounded values, signed, [rows, terms, k] as float; the padding past k must be zero.
  at::Tensor Values() const {
    const at::Tensor v = bytes() ? q_.to(at::kFloat).sub(128) : q_.to(at::kFloat);
    EXPECT_TRUE(v.narrow(2, k_, ldq_ - k_).eq(0).all().item<bool>()) << "padding";
    return v.narrow(2, 0, k_);
  }
  const at::Tensor& row_scale() const { return row_scale_; }
  // out[count, n] (=|+=) rows [r0, r0 + count) times the panels [p0, p1).
  void Multiply(int64_t r0, int64_t count, const at::Tensor& packed, const at::Tensor& sums, const at::Tensor& scale,
                int64_t n, int64_t p0, int64_t p1, float* out, bool accumulate) const {
    if (build_ == Int8Build::kAvx512Vnni) {
      kernels::Int8GemmPackedAvx512(q_[r0].data_ptr<uint8_t>(), ldq_, row_scale_[r0].data_ptr<float>(), count, terms_,
                                    packed.data_ptr<int8_t>(), sums.data_ptr<int32_t>(), scale.data_ptr<float>(), k_, n,
                                    p0, p1, out, n, accumulate);
    } else if (build_ == Int8Build::kAvxVnni) {
      kernels::Int8GemmPackedAvxVnni(q_[r0].data_ptr<uint8_t>(), ldq_, row_scale_[r0].data_ptr<float>(), count, terms_,
                                     packed.data_ptr<int8_t>(), sums.data_ptr<int32_t>(), scale.data_ptr<float>(), k_,
                                     n, p0, p1, out, n, accumulate);
    } else {
      kernels::Int8GemmPackedAvx2(q_[r0].data_ptr<int16_t>(), ldq_, row_scale_[r0].data_ptr<float>(), count, terms_,
                                  packed.data_ptr<int8_t>(), scale.data_ptr<float>(), k_, n, p0, p1, out, n,
                                  accumulate);
    }
  }

 private:
  bool bytes() const { return build_ != Int8Build::kAvx2; }
  Int8Build build_;
  int terms_;
  int64_t k_, ldq_;
  at::Tensor q_, row_scale_;
};

// The bf16 GEMM's builds: vdpbf16ps (AVX512-BF16), the weights widened on ZMM (AVX-512F) and
// on YMM (AVX2).
enum class Bf16Build { kAvx512Bf16, kWidened, kAvx2 };

// The builds this CPU can run, whichever of them PackedGemm would choose.
std::vector<Bf16Build> PackedBf16Builds() {
  std::vector<Bf16Build> builds;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (CpuIsaLevel() == IsaLevel::kAvx512 && __builtin_cpu_supports("avx512bf16")) {
    builds.push_back(Bf16Build::kAvx512Bf16);
  }
  if (CpuIsaLevel() == IsaLevel::kAvx512) builds.push_back(Bf16Build::kWidened);
  if (CpuIsaLevel() >= IsaLevel::kAvx2) builds.push_back(Bf16Build::kAvx2);
#endif
  return builds;
}

// The packed GEMMs against their definition in torch (lstm_kernels.h), every build this CPU
// can run (AVX-512 and AVX2), which must agree bit for bit: int8 quantizes each row of
// activations exactly as torch.round(a / (max|a| / 127)) (and the residual, with two terms)
// and sums exactly; bf16 rounds the activations to bf16. Every row remainder of the tiles,
// every panel remainder, column tails and k tails (and a block of 120 rows); a row's bits
// never depend on the other rows; zero rows give zeros and a NaN gives NaN.
TEST(WeightStorageTest, PackedGemmsMatchTheirDefinition) {
  const std::vector<Int8Build> int8_builds = PackedInt8Build::Available();
  if (int8_builds.empty()) GTEST_SKIP() << "this CPU has no AVX2 + FMA";
  at::Generator gen = at::detail::createCPUGenerator(33);
  for (int64_t rows : {1, 5, 6, 7, 13, 130}) {
    for (int64_t n : {16, 40, 200, 1040}) {
      for (int64_t k : {5, 70}) {
        at::Tensor a = at::empty({rows, k}).normal_(0, 1, gen);
        a[0].zero_();
        const at::Tensor w = at::empty({k, n}).normal_(0, 0.1, gen);
        const at::Tensor base = at::empty({rows, n}).normal_(0, 1, gen);
        const std::string where =
            "rows " + std::to_string(rows) + " n " + std::to_string(n) + " k " + std::to_string(k);
        const int64_t panels = kernels::Panels(n);
        at::Tensor bf16_first, bf16_tiny_first;  // the first bf16 build's outputs
        if (!int8_builds.empty()) {
          const at::Tensor scale = w.abs().amax(0) / 127;
          at::Tensor q = at::round(w / scale).to(at::kChar).contiguous();
          q[0][0] = -128;  // a weight the symmetric rounding never gives, but a stored set may hold
          at::Tensor packed = at::empty({kernels::PackedElements(k, n, kernels::kInt8Group)}, at::kChar);
          at::Tensor sums = at::empty({n}, at::kInt);
          kernels::PackInt8(q.data_ptr<int8_t>(), n, k, n, packed.data_ptr<int8_t>(), sums.data_ptr<int32_t>());
          EXPECT_TRUE(sums.equal(q.to(at::kInt).sum(0).to(at::kInt)));
          for (int terms : {1, 2}) {
            const std::string how = where + " terms " + std::to_string(terms);
            at::Tensor first_out[2];  // by accumulate, from the first build
            for (Int8Build b : int8_builds) {
              const std::string build = how + " " + PackedInt8Build::Name(b);
              const PackedInt8Build run(b, a, terms);
              const at::Tensor& row_scale = run.row_scale();
              const at::Tensor values = run.Values();
              const at::Tensor s = (a.abs().amax(1) / 127).unsqueeze(1), s_lo = s / 254;
              EXPECT_TRUE(row_scale.select(1, 0).equal(s.squeeze(1))) << build;
              const at::Tensor nonzero = s > 0;
              const at::Tensor qh = at::where(nonzero, at::round(a / s), at::zeros({}));
              EXPECT_TRUE(values.select(1, 0).equal(qh)) << build;
              const at::Tensor wq = q.to(at::kFloat);
              // Integer sums below 2^24 are exact in float32 in any order.
              at::Tensor want = base + s * at::matmul(qh, wq) * scale;
              if (terms == 2) {
                EXPECT_TRUE(row_scale.select(1, 1).equal(s_lo.squeeze(1))) << build;
                // The residual a - qh * s rounded once (fused), exact in double before the rounding.
                const at::Tensor residual = (a.to(at::kDouble) - qh.to(at::kDouble) * s.to(at::kDouble)).to(at::kFloat);
                const at::Tensor ql = at::where(nonzero, at::round(residual / s_lo).clamp(-127, 127), at::zeros({}));
                EXPECT_TRUE(values.select(1, 1).equal(ql)) << build;
                EXPECT_LE(MaxAbsDiff(at::where(nonzero, qh * s + ql * s_lo, at::zeros({})), a),
                          (a.abs().max() / 127 / 254).item<double>() + 1e-30)
                    << "the two terms are 254 times finer than one";
                want = base + (s * at::matmul(qh, wq) + s_lo * at::matmul(ql, wq)) * scale;
              }
              for (bool accumulate : {true, false}) {
                at::Tensor out = base.clone();
                run.Multiply(0, rows, packed, sums, scale, n, 0, panels, out.data_ptr<float>(), accumulate);
                EXPECT_LT(MaxAbsDiff(out, accumulate ? want : want - base), 1e-5) << "int8 " << build;
                if (accumulate) {
                  EXPECT_TRUE(out[0].equal(base[0])) << "a zero row adds nothing";
                }
                // The last row alone, and the panels split in two: the same bits.
                at::Tensor last = base.narrow(0, rows - 1, 1).clone();
                const int64_t half = panels / 2;
                for (auto [p0, p1] : {std::pair<int64_t, int64_t>{0, half}, {half, panels}}) {
                  run.Multiply(rows - 1, 1, packed, sums, scale, n, p0, p1, last.data_ptr<float>(), accumulate);
                }
                EXPECT_TRUE(last.equal(out.narrow(0, rows - 1, 1))) << "int8 " << build;
                // Every build gives the same bits (the integer sums are exact).
                at::Tensor& first = first_out[accumulate ? 1 : 0];
                if (!first.defined()) {
                  first = out;
                } else {
                  EXPECT_TRUE(first.equal(out)) << "int8 " << build << " against the first build";
                }
              }
            }
          }
          // A NaN makes its row's outputs NaN (float32 arithmetic would), and only its row's;
          // a row of subnormals rounds as in the VNNI build (a qh past 127 saturates to 127).
          at::Tensor bad = a.clone();
          bad[rows - 1][k / 2] = std::numeric_limits<float>::quiet_NaN();
          if (rows > 2) {
            bad[1].fill_(0);
            bad[1][0] = 190 * std::numeric_limits<float>::denorm_min();
            bad[1][k - 1] = -190 * std::numeric_limits<float>::denorm_min();
          }
          for (int terms : {1, 2}) {
            at::Tensor first;
            for (Int8Build b : int8_builds) {
              const PackedInt8Build run(b, bad, terms);
              at::Tensor out = base.clone();
              run.Multiply(0, rows, packed, sums, scale, n, 0, panels, out.data_ptr<float>(), true);
              EXPECT_TRUE(out[rows - 1].isnan().all().item<bool>()) << where;
              if (rows > 1) {
                EXPECT_FALSE(out.narrow(0, 0, rows - 1).isnan().any().item<bool>()) << where;
              }
              if (!first.defined()) {
                first = out;
              } else {
                EXPECT_TRUE(first.narrow(0, 0, rows - 1).equal(out.narrow(0, 0, rows - 1))) << where;
              }
            }
          }
        }
        for (Bf16Build bf16_build : PackedBf16Builds()) {
          // native: vdpbf16ps, on rows rounded to bf16; else float32-shaped, on rows as floats.
          const bool native = bf16_build == Bf16Build::kAvx512Bf16;
          const std::string build = where + (native                              ? " avx512-bf16"
                                             : bf16_build == Bf16Build::kWidened ? " avx512-widened"
                                                                                 : " avx2");
          const at::Tensor wb = w.to(at::kBFloat16).contiguous();
          at::Tensor packed = at::empty({kernels::PackedElements(k, n, kernels::kBf16Group)}, at::kBFloat16);
          kernels::PackBf16(reinterpret_cast<const uint16_t*>(wb.data_ptr()), n, k, n,
                            reinterpret_cast<uint16_t*>(packed.data_ptr()));
          const int64_t ldq = kernels::RowStride(k, kernels::kBf16Group);
          // The rounded rows as float32 values (the AVX2 build's format).
          at::Tensor rounded = at::empty({rows, ldq});
          at::Tensor qa = at::empty({rows, ldq}, at::kBFloat16);
          if (native) {
            kernels::RoundRowsBf16Avx512(a.data_ptr<float>(), k, rows, k, reinterpret_cast<uint16_t*>(qa.data_ptr()),
                                         ldq);
            rounded = qa.to(at::kFloat);
          } else {
            kernels::RoundRowsBf16Avx2(a.data_ptr<float>(), k, rows, k, rounded.data_ptr<float>(), ldq);
          }
          EXPECT_TRUE(rounded.narrow(1, 0, k).equal(a.to(at::kBFloat16).to(at::kFloat))) << build;
          EXPECT_TRUE(rounded.narrow(1, k, ldq - k).eq(0).all().item<bool>()) << build;
          const at::Tensor want = base + at::matmul(a.to(at::kBFloat16).to(at::kFloat), wb.to(at::kFloat));
          at::Tensor out = base.clone();
          const auto* w16 = reinterpret_cast<const uint16_t*>(packed.data_ptr());
          const auto multiply = [&](const at::Tensor& q, at::Tensor& into) {
            if (native) {
              kernels::Bf16GemmPackedAvx512(reinterpret_cast<const uint16_t*>(q.data_ptr()), ldq, rows, w16, k, n, 0,
                                            panels, into.data_ptr<float>(), n, true);
            } else {
              (bf16_build == Bf16Build::kWidened ? kernels::Bf16GemmPackedWidened : kernels::Bf16GemmPackedAvx2)(
                  q.data_ptr<float>(), ldq, rows, w16, k, n, 0, panels, into.data_ptr<float>(), n, true);
            }
          };
          multiply(native ? qa : rounded, out);
          EXPECT_LT(MaxAbsDiff(out, want), 1e-5) << "bf16 " << build;
          EXPECT_TRUE(out[0].equal(base[0])) << "a zero row adds nothing";
          if (!bf16_first.defined()) {
            bf16_first = out;
          } else {
            EXPECT_TRUE(bf16_first.equal(out)) << "bf16 " << build << " against the first build";
          }
          // Denormals and underflowing products: vdpbf16ps reads denormal inputs as zero and
          // flushes denormal sums; the AVX2 build must give the same bits. (Rows of values
          // near 1e-38 times weights near 0.1, so that products and sums underflow.)
          at::Tensor tiny = a * 2e-37;
          tiny[rows - 1][0] = 3e-39f;  // a denormal input
          at::Tensor tiny_out = at::zeros({rows, n});
          if (native) {
            kernels::RoundRowsBf16Avx512(tiny.data_ptr<float>(), k, rows, k, reinterpret_cast<uint16_t*>(qa.data_ptr()),
                                         ldq);
            multiply(qa, tiny_out);
          } else {
            at::Tensor tiny_rounded = at::empty({rows, ldq});
            kernels::RoundRowsBf16Avx2(tiny.data_ptr<float>(), k, rows, k, tiny_rounded.data_ptr<float>(), ldq);
            EXPECT_EQ(tiny_rounded[rows - 1][0].item<float>(), 0.0f) << "a denormal rounds to zero, as vcvtneps2bf16";
            multiply(tiny_rounded, tiny_out);
          }
          if (!bf16_tiny_first.defined()) {
            bf16_tiny_first = tiny_out;
          } else {
            EXPECT_TRUE(bf16_tiny_first.equal(tiny_out)) << "bf16 underflow " << build << " against the first build";
          }
        }
      }
    }
  }
}

// The packed float32 GEMM, every build this CPU can run, against its definition: one FMA
// chain per output in k's order from 0 (std::fma, one rounding each), added to out at the
// end when accumulating. Bit for bit, for every row remainder of the tiles, panel
// remainders and column tails, k from 1, a sub-range of panels, and 130 rows (the AVX2
// build's block of 120).
TEST(WeightStorageTest, PackedF32GemmIsOneFmaChainPerOutput) {
  std::vector<bool> builds;  // true: AVX-512
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (CpuIsaLevel() == IsaLevel::kAvx512) builds.push_back(true);
  if (CpuIsaLevel() >= IsaLevel::kAvx2) builds.push_back(false);
#endif
  if (builds.empty()) GTEST_SKIP() << "this CPU has no AVX2 + FMA";
  at::Generator gen = at::detail::createCPUGenerator(41);
  for (int64_t rows : {1, 2, 3, 5, 6, 7, 13, 130}) {
    for (int64_t n : {16, 40, 200, 1040}) {
      for (int64_t k : {1, 5, 70}) {
        const at::Tensor a = at::empty({rows, k}).normal_(0, 1, gen);
        const at::Tensor w = at::empty({k, n}).normal_(0, 0.3, gen);
        const at::Tensor base = at::empty({rows, n}).normal_(0, 1, gen);
        at::Tensor packed = at::empty({kernels::PackedElements(k, n, 1)});
        kernels::PackF32(w.data_ptr<float>(), n, k, n, packed.data_ptr<float>());
        at::Tensor chain = at::empty({rows, n});
        const float* pa = a.data_ptr<float>();
        const float* pw = w.data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < n; ++j) {
            float acc = 0.0f;
            for (int64_t i = 0; i < k; ++i) acc = std::fma(pa[r * k + i], pw[i * n + j], acc);
            chain.data_ptr<float>()[r * n + j] = acc;
          }
        }
        const at::Tensor summed = base + chain;
        // Panels [1, 3) only: the columns 16..47, the rest of out untouched.
        const int64_t panels = kernels::Panels(n), p0 = std::min<int64_t>(1, panels - 1);
        const int64_t p1 = std::min<int64_t>(3, panels), j0 = 16 * p0, j1 = std::min(n, 16 * p1);
        for (bool avx512 : builds) {
          const auto gemm = avx512 ? kernels::F32GemmPackedAvx512 : kernels::F32GemmPackedAvx2;
          const std::string what = std::string(avx512 ? "AVX-512" : "AVX2") + " rows=" + std::to_string(rows) +
                                   " n=" + std::to_string(n) + " k=" + std::to_string(k);
          at::Tensor out = at::full({rows, n}, std::numeric_limits<float>::quiet_NaN());
          gemm(pa, k, rows, packed.data_ptr<float>(), k, n, 0, panels, out.data_ptr<float>(), n, false);
          EXPECT_TRUE(out.equal(chain)) << what << " max diff " << MaxAbsDiff(out, chain);
          out = base.clone();
          gemm(pa, k, rows, packed.data_ptr<float>(), k, n, 0, panels, out.data_ptr<float>(), n, true);
          EXPECT_TRUE(out.equal(summed)) << what << " accumulating";
          out = base.clone();
          gemm(pa, k, rows, packed.data_ptr<float>(), k, n, p0, p1, out.data_ptr<float>(), n, false);
          EXPECT_TRUE(out.narrow(1, j0, j1 - j0).equal(chain.narrow(1, j0, j1 - j0))) << what << " panels";
          EXPECT_TRUE(out.narrow(1, 0, j0).equal(base.narrow(1, 0, j0))) << what << " left of the panels";
          EXPECT_TRUE(out.narrow(1, j1, n - j1).equal(base.narrow(1, j1, n - j1))) << what << " right of the panels";
        }
      }
    }
  }
}

// A float32 set on the packed GEMM (auto, at every batch size from x86-64-v3 on) gives a row
// the bits it gets alone, whatever rows it is batched with: each output is one FMA chain
// over its own row, and the threads split columns, never a sum. Within 1e-5 of the generic
// path (LibTorch's ops), which sums in its own order.
TEST(WeightStorageTest, Float32SetsGiveARowTheSameBitsInAnyBatch) {
  if (!kernels::HasPackedF32()) GTEST_SKIP() << "no packed float32 GEMM below x86-64-v3";
  for (int64_t hidden : {3, 40, 200}) {
    StackedLstm lstm = *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(2, 7, hidden, true, 2), {}));
    at::Generator gen = at::detail::createCPUGenerator(hidden);
    const at::Tensor x = at::empty({6, 70, 7}).normal_(0, 1, gen);
    LstmState state;
    for (int64_t l = 0; l < 2; ++l) {
      state.h.push_back(at::empty({70, hidden}).uniform_(-1, 1, gen));
      state.c.push_back(at::empty({70, hidden}).normal_(0, 1, gen));
    }
    auto together = lstm.Run(x, state, true);
    auto generic = lstm.Run(x, state, true, LstmPath::kGeneric);
    ASSERT_TRUE(together.ok() && generic.ok()) << together.status() << generic.status();
    EXPECT_LT(MaxAbsDiff(together->outputs, generic->outputs), 1e-5) << "H=" << hidden;
    for (int64_t batch : {1, 3, 5, 8}) {
      const int64_t row0 = 70 - batch;  // the last rows of the big batch
      LstmState part;
      for (int64_t l = 0; l < 2; ++l) {
        part.h.push_back(state.h[l].narrow(0, row0, batch).contiguous());
        part.c.push_back(state.c[l].narrow(0, row0, batch).contiguous());
      }
      auto alone = lstm.Run(x.narrow(1, row0, batch).contiguous(), part, true);
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_TRUE(alone->outputs.equal(together->outputs.narrow(1, row0, batch))) << "H=" << hidden << " B=" << batch;
      auto step = lstm.Step(x[0].narrow(0, row0, batch).contiguous(), part);
      ASSERT_TRUE(step.ok()) << step.status();
      EXPECT_TRUE(step->h.back().equal(together->outputs[0].narrow(0, row0, batch))) << "step, B=" << batch;
    }
  }
}

// A set computes the same bits with AVX-512 (AVX512-VNNI/BF16 for reduced sets) and with
// AVX2, and with AVX2 and AVX-VNNI where the CPU has it (the cap switches the packed GEMMs
// between their builds; the layout is the same): an answer does not depend on which x86-64
// server computed it.
TEST(WeightStorageTest, SetsGiveTheSameBitsOnAvx2AsWithAvx512) {
  if (CpuIsaLevel() != IsaLevel::kAvx512) GTEST_SKIP() << "needs AVX-512 to compare with";
  const IsaLevel level = KernelIsa();
  for (WeightStorage storage : {WeightStorage::kDType, WeightStorage::kInt8, WeightStorage::kBFloat16}) {
    SetIsaCap(IsaLevel::kAvx512);
    const bool native = storage == WeightStorage::kInt8 ? kernels::HasPackedInt8Vnni()
                        : storage == WeightStorage::kBFloat16
                            ? kernels::HasPackedBf16Avx512() || kernels::HasPackedBf16Widened()
                            : kernels::HasPackedF32Avx512();
    SetIsaCap(level);
    if (!native) continue;
    StackedLstm lstm =
        *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(2, 40, 72, true, 6, storage), {}));
    at::Generator gen = at::detail::createCPUGenerator(12);
    for (int64_t batch : {1, 7, 64}) {
      const at::Tensor x = at::empty({9, batch, 40}).normal_(0, 2, gen);
      SetIsaCap(IsaLevel::kAvx512);
      auto wide = lstm.Run(x, {}, true, LstmPath::kBlas);
      std::vector<IsaLevel> caps = {IsaLevel::kAvx2};
      if (__builtin_cpu_supports("avxvnni")) caps.push_back(IsaLevel::kAvx2Vnni);
      for (IsaLevel cap : caps) {
        SetIsaCap(cap);
        EXPECT_EQ(KernelIsa(), cap);
        EXPECT_TRUE(kernels::HasPackedInt8() && kernels::HasPackedBf16() && kernels::HasPackedF32());
        EXPECT_FALSE(kernels::HasPackedInt8Vnni() || kernels::HasPackedBf16Avx512() ||
                     kernels::HasPackedBf16Widened() || kernels::HasPackedF32Avx512());
        EXPECT_EQ(kernels::HasPackedInt8AvxVnni(), cap == IsaLevel::kAvx2Vnni);
        auto avx2 = lstm.Run(x, {}, true, LstmPath::kBlas);
        SetIsaCap(level);
        ASSERT_TRUE(wide.ok() && avx2.ok()) << wide.status() << avx2.status();
        const std::string what =
            std::string(WeightStorageName(storage)) + " B=" + std::to_string(batch) + " at " + IsaLevelName(cap);
        EXPECT_TRUE(wide->outputs.equal(avx2->outputs))
            << what << " max diff " << MaxAbsDiff(wide->outputs, avx2->outputs);
        for (int64_t l = 0; l < 2; ++l) {
          EXPECT_TRUE(wide->final_state.c[l].equal(avx2->final_state.c[l])) << what;
        }
      }
    }
  }
}

// Both AVX-512 builds of the packed bf16 GEMM (vdpbf16ps where the CPU has it, and the weights
// widened to float32 FMAs, Intel's choice) give a whole set the AVX2 build's bits, whichever
// of them the CPU would choose, and the startup line names the one that runs.
TEST(WeightStorageTest, EveryAvx512Bf16BuildGivesASetTheAvx2Bits) {
  if (CpuIsaLevel() != IsaLevel::kAvx512) GTEST_SKIP() << "needs AVX-512";
  const IsaLevel level = KernelIsa();
  StackedLstm lstm = *StackedLstm::FromParameterSet(
      *CreateParameterSet(TestLstmSpec(2, 40, 72, true, 6, WeightStorage::kBFloat16), {}));
  at::Generator gen = at::detail::createCPUGenerator(13);
  const at::Tensor x = at::empty({9, 64, 40}).normal_(0, 2, gen);
  SetIsaCap(IsaLevel::kAvx2);
  auto avx2 = lstm.Run(x, {}, true, LstmPath::kBlas);
  SetIsaCap(IsaLevel::kAvx512);
  std::vector<Bf16Kernel> kernels = {Bf16Kernel::kWidened};
  if (__builtin_cpu_supports("avx512bf16")) kernels.push_back(Bf16Kernel::kDot);
  for (Bf16Kernel kernel : kernels) {
    SetBf16Kernel(kernel);
    const bool widened = kernel == Bf16Kernel::kWidened;
    EXPECT_EQ(kernels::HasPackedBf16Widened(), widened);
    EXPECT_EQ(kernels::HasPackedBf16Avx512(), !widened);
    const std::string line = DescribeCpuKernels();
    EXPECT_NE(line.find(widened ? "packed bf16 GEMM AVX-512 widened;" : "packed bf16 GEMM AVX512-BF16;"),
              std::string::npos)
        << line;
    for (int64_t rows : {1, 7, 64}) {
      auto run = lstm.Run(x.narrow(1, 0, rows), {}, true, LstmPath::kBlas);
      ASSERT_TRUE(run.ok() && avx2.ok()) << run.status() << avx2.status();
      EXPECT_TRUE(run->outputs.equal(avx2->outputs.narrow(1, 0, rows)))
          << (widened ? "widened" : "vdpbf16ps") << " B=" << rows << " max diff "
          << MaxAbsDiff(run->outputs, avx2->outputs.narrow(1, 0, rows));
    }
  }
  SetBf16Kernel(Bf16Kernel::kAuto);
  SetIsaCap(level);
}

// A long sequence on a small hidden size: its input projection rounds more rows at once than
// a thread keeps cached (2 MiB), in a buffer of the call. Its first steps are the bits of a
// short run (rows are rounded and summed on their own).
TEST(WeightStorageTest, LongSequencesRoundTheirInputsInACallBuffer) {
  for (WeightStorage storage : {WeightStorage::kBFloat16, WeightStorage::kInt8}) {
    StackedLstm lstm =
        *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(1, 600, 4, true, 8, storage), {}));
    at::Generator gen = at::detail::createCPUGenerator(8);
    const at::Tensor x = at::empty({2000, 1, 600}).normal_(0, 1, gen);
    auto whole = lstm.Run(x, {});
    auto start = lstm.Run(x.narrow(0, 0, 10), {});
    ASSERT_TRUE(whole.ok() && start.ok());
    EXPECT_TRUE(whole->outputs.narrow(0, 0, 10).equal(start->outputs)) << WeightStorageName(storage);
    EXPECT_FALSE(whole->outputs.isnan().any().item<bool>());
  }
}

// A large layer (past the size where B=1 splits rows across threads) at B=1..4.
TEST(WeightStorageTest, LargeLayersSplitAcrossThreadsAgree) {
  for (WeightStorage storage : {WeightStorage::kBFloat16, WeightStorage::kInt8}) {
    StackedLstm lstm =
        *StackedLstm::FromParameterSet(*CreateParameterSet(TestLstmSpec(1, 600, 600, false, 9, storage), {}));
    for (int64_t batch : {1, 4}) {
      at::Generator gen = at::detail::createCPUGenerator(batch);
      const at::Tensor x = at::empty({2, batch, 600}).normal_(0, 1, gen);
      auto small = lstm.Run(x, {}, true, LstmPath::kSmallBatch);
      auto generic = lstm.Run(x, {}, true, LstmPath::kGeneric);
      ASSERT_TRUE(small.ok() && generic.ok());
      EXPECT_LT(MaxAbsDiff(small->outputs, generic->outputs), 2e-5) << WeightStorageName(storage);
    }
  }
}

// Max and mean abs error of the top layer's h against the float32 set over seeded N(0, 1)
// inputs, the state carried, after 1, 100 and (when run that long) 1,000 steps.
struct ErrorRow {
  double max[3] = {0, 0, 0};
  double mean[3] = {0, 0, 0};
};
ErrorRow MeasureError(const at::Tensor& full_outputs, const ParameterSetSpec& spec, WeightStorage storage,
                      const at::Tensor& x) {
  ParameterSetSpec reduced_spec = spec;
  reduced_spec.weight_storage = storage;
  StackedLstm reduced = *StackedLstm::FromParameterSet(*CreateParameterSet(reduced_spec, {}));
  const at::Tensor b = reduced.Run(x, {})->outputs;
  ErrorRow row;
  const int64_t at_steps[3] = {1, 100, 1000};
  for (int i = 0; i < 3 && at_steps[i] <= x.size(0); ++i) {
    const at::Tensor d = (full_outputs[at_steps[i] - 1] - b[at_steps[i] - 1]).abs();
    row.max[i] = d.max().item<double>();
    row.mean[i] = d.mean().item<double>();
  }
  return row;
}

// The bounds after 100 steps on the template initialization (kaiming_normal, biases
// uniform(-1/sqrt(H), 1/sqrt(H))): int8 within 2e-2, bfloat16 within 1e-2, on shapes and
// seeds of their own, at B = 1 and at larger batches, on the path auto takes (the packed
// GEMMs where the CPU has them: rounded activations; else the small kernels and BLAS on
// float32 activations). The figures print (README's table comes from them).
TEST(WeightStorageTest, ErrorAgainstFloat32IsBounded) {
  struct Case {
    const char* name;
    int64_t layers, input, hidden;
    bool bias;
    uint64_t seed;
    int64_t steps, batch;
  };
  for (const Case& c :
       {Case{"S", 2, 64, 64, false, 1, 1000, 1}, Case{"S", 2, 64, 64, false, 2, 1000, 1},
        Case{"M", 2, 256, 512, true, 1, 1000, 1}, Case{"H=1024", 2, 128, 1024, true, 3, 100, 1},
        Case{"S", 2, 64, 64, false, 4, 1000, 16}, Case{"M", 2, 128, 256, true, 5, 100, 64},
        Case{"H=1024", 1, 1024, 1024, true, 6, 100, 8}, Case{"H=1024", 1, 1024, 1024, true, 6, 100, 1}}) {
    ParameterSetSpec spec = TestLstmSpec(c.layers, c.input, c.hidden, c.bias, c.seed);
    spec.lstm->bias_init = Initializer::DefaultBias();
    at::Generator gen = at::detail::createCPUGenerator(c.seed + 100);
    const at::Tensor x = at::empty({c.steps, c.batch, c.input}).normal_(0, 1, gen);
    const at::Tensor full = StackedLstm::FromParameterSet(*CreateParameterSet(spec, {}))->Run(x, {})->outputs;
    for (WeightStorage storage : {WeightStorage::kBFloat16, WeightStorage::kInt8}) {
      const ErrorRow row = MeasureError(full, spec, storage, x);
      std::printf(
          "%-7s B=%-3lld seed %llu %-8s %s max abs error after 1/100/%lld steps %.1e %.1e %.1e, mean %.1e %.1e "
          "%.1e\n",
          c.name, static_cast<long long>(c.batch), static_cast<unsigned long long>(c.seed),
          std::string(WeightStorageName(storage)).c_str(), Packed(storage) ? "(packed)" : "        ",
          static_cast<long long>(c.steps), row.max[0], row.max[1], row.max[c.steps >= 1000 ? 2 : 1], row.mean[0],
          row.mean[1], row.mean[c.steps >= 1000 ? 2 : 1]);
      const double bound = storage == WeightStorage::kInt8 ? 2e-2 : 1e-2;
      EXPECT_LT(row.max[1], bound) << c.name << " " << WeightStorageName(storage);
      EXPECT_GT(row.max[1], 0.0) << "the reduced set must differ from float32 at all";
    }
  }
}

}  // namespace
}  // namespace lstmserve::core
