// The parameter-set operations of the engine, without a front end: create, list, import,
// analyze, in the core's types.
#include "lstmserve/server/engine/set_operations.h"

#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"

#include "engine_fixture.h"

namespace lstmserve::server {
namespace {

class SetOperationsTest : public ::testing::Test, public EngineWithOneSet {
 protected:
  void SetUp() override { StartEngine(core::LstmTemplate{2, 8, 16, true}, BatchOptions{}); }
  void TearDown() override { StopEngine(); }

  static core::ParameterSetSpec Spec(uint64_t seed) {
    core::ParameterSetSpec spec;
    spec.lstm = core::LstmTemplate{1, 4, 8, true};
    spec.seed = seed;
    return spec;
  }

  // A header for the tensors of `set`, and their bytes.
  static ImportHeader HeaderOf(const core::ParameterSet& set, const std::string& id) {
    ImportHeader header;
    header.requested_id = id;
    for (const auto& t : set.tensors) {
      header.tensors.push_back({t.name, core::DType::kFloat32, t.value.sizes().vec()});
    }
    return header;
  }
  static absl::string_view Bytes(const at::Tensor& t) {
    return {static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.nbytes())};
  }
};

TEST_F(SetOperationsTest, CreateStoresTheSetWithItsSpecRecordAndRefusesATakenId) {
  auto made = CreateSet(*registry_, core::CreateLimits(), "made", Spec(3), "the front end's record");
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ((*made)->stored.origin, "created");
  EXPECT_EQ((*made)->stored.spec, "the front end's record");
  ASSERT_TRUE((*made)->lstm.has_value());
  EXPECT_EQ((*made)->lstm->hidden_size(), 8);
  auto again = CreateSet(*registry_, core::CreateLimits(), "made", Spec(3), "");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  auto bad = CreateSet(*registry_, core::CreateLimits(), "no/slash", Spec(3), "");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  auto fresh = CreateSet(*registry_, core::CreateLimits(), "", Spec(3), "");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_TRUE(absl::StartsWith((*fresh)->stored.id, "ps-")) << (*fresh)->stored.id;
  EXPECT_EQ((*fresh)->stored.checksum, (*made)->stored.checksum);  // same spec and seed, same bits
}

// A bfloat16 set exists on CUDA only, so a CUDA server makes it there (the GPU check found
// the server building it on the CPU and refusing it). Runs where a GPU is.
TEST(SetOperationsCudaTest, ACudaServerCreatesABfloat16SetOnItsDevice) {
  if (!core::CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  const auto dir =
      std::filesystem::temp_directory_path() / ("lstmserve-cuda-" + std::to_string(std::random_device()()));
  auto store = core::ParameterStore::Open(dir.string());
  ASSERT_TRUE(store.ok()) << store.status();
  SetRegistry registry(*std::move(store), c10::Device(c10::kCUDA, 0), 0);
  core::ParameterSetSpec spec;
  spec.lstm = core::LstmTemplate{2, 16, 32, true};
  spec.seed = 7;
  spec.dtype = core::DType::kBFloat16;
  auto made = CreateSet(registry, core::CreateLimits(), "half", spec, "");
  ASSERT_TRUE(made.ok()) << made.status();
  for (const auto& t : (*made)->stored.set.tensors) {
    EXPECT_TRUE(t.value.is_cuda()) << t.name;
    EXPECT_EQ(t.value.scalar_type(), at::kBFloat16) << t.name;
  }
  // The same bits as the CPU's float32 set rounded to bfloat16.
  spec.dtype = core::DType::kFloat32;
  auto full = core::CreateParameterSet(spec, core::CreateLimits());
  ASSERT_TRUE(full.ok()) << full.status();
  for (size_t i = 0; i < full->tensors.size(); ++i) {
    EXPECT_TRUE(at::equal((*made)->stored.set.tensors[i].value.cpu(), full->tensors[i].value.to(at::kBFloat16)))
        << full->tensors[i].name;
  }
  std::filesystem::remove_all(dir);
}

TEST_F(SetOperationsTest, ListPagesThroughEverySetAndRefusesAForeignToken) {
  for (const char* id : {"a", "b", "c", "d"}) ASSERT_TRUE(CreateSet(*registry_, {}, id, Spec(1), "").ok());
  std::vector<std::string> seen;
  std::string token;
  for (int page = 0; page < 10; ++page) {
    auto listed = ListSets(*registry_, 2, token);
    ASSERT_TRUE(listed.ok()) << listed.status();
    for (const auto& s : listed->sets) seen.push_back(s->stored.id);
    token = listed->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c", "d", "m"}));
  EXPECT_EQ(ListSets(*registry_, 1001, "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ListSets(*registry_, -1, "").status().code(), absl::StatusCode::kInvalidArgument);
  auto foreign = ListSets(*registry_, 2, "b");
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(foreign.status().message(), "page_token")) << foreign.status();
}

TEST_F(SetOperationsTest, AnImportStoresTheSameBitsInAnyChunkingAndChecksTheChecksum) {
  auto source = core::CreateParameterSet(Spec(9), core::CreateLimits());
  ASSERT_TRUE(source.ok());
  ImportHeader header = HeaderOf(*source, "imported");
  header.checksum = core::ComputeChecksum(*source);
  auto import = SetImport::Begin(registry_.get(), {16, 1 << 20}, header);
  ASSERT_TRUE(import.ok()) << import.status();
  for (size_t i = 0; i < source->tensors.size(); ++i) {
    absl::string_view bytes = Bytes(source->tensors[i].value);
    for (size_t offset = 0; offset < bytes.size(); offset += 7) {  // odd chunks, across values
      ASSERT_TRUE((*import)->Append(static_cast<int64_t>(i), offset, bytes.substr(offset, 7)).ok());
    }
  }
  auto stored = (*import)->Finish();
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)->stored.origin, "imported");
  EXPECT_EQ((*stored)->stored.checksum, header.checksum);
  ASSERT_TRUE((*stored)->lstm.has_value());
}

TEST_F(SetOperationsTest, ABadImportIsRefusedWithTheReasonAndStoresNothing) {
  auto source = core::CreateParameterSet(Spec(9), core::CreateLimits());
  ASSERT_TRUE(source.ok());
  const ImportLimits limits{16, 1 << 20};
  auto begin = [&](ImportHeader header) {
    auto import = SetImport::Begin(registry_.get(), limits, std::move(header));
    EXPECT_TRUE(import.ok()) << import.status();
    return import.ok() ? *std::move(import) : nullptr;
  };
  auto message = [](const absl::Status& s) { return std::string(s.message()); };

  // The header's own faults.
  ImportHeader twice = HeaderOf(*source, "x");
  twice.tensors[1].name = twice.tensors[0].name;
  EXPECT_TRUE(absl::StrContains(message(SetImport::Begin(registry_.get(), limits, twice).status()), "used twice"));
  EXPECT_EQ(SetImport::Begin(registry_.get(), {1, 1 << 20}, HeaderOf(*source, "x")).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(SetImport::Begin(registry_.get(), {16, 100}, HeaderOf(*source, "x")).status().code(),
            absl::StatusCode::kResourceExhausted);
  ImportHeader negative = HeaderOf(*source, "x");
  negative.tensors[0].shape[0] = -4;
  EXPECT_EQ(SetImport::Begin(registry_.get(), limits, negative).status().code(), absl::StatusCode::kInvalidArgument);

  // Chunks out of order, overrunning, or short.
  auto import = begin(HeaderOf(*source, "x"));
  ASSERT_NE(import, nullptr);
  absl::string_view first = Bytes(source->tensors[0].value);
  EXPECT_TRUE(absl::StrContains(message(import->Append(1, 0, "abcd")), "tensor 0 ended after 0"));
  EXPECT_TRUE(absl::StrContains(message(import->Append(0, 4, first.substr(4, 4))), "out of order"));
  EXPECT_TRUE(absl::StrContains(message(import->Append(5, 0, "")), "is not in [0, "));
  EXPECT_TRUE(absl::StrContains(message(import->Append(0, 0, std::string(first.size() + 1, 'x'))), "overruns"));
  ASSERT_TRUE(import->Append(0, 0, first.substr(0, 8)).ok());
  auto short_one = import->Finish();
  EXPECT_TRUE(absl::StrContains(message(short_one.status()), "at 8 of")) << short_one.status();

  // Every byte, but NaN in it, or a checksum that does not match.
  for (const bool nan : {true, false}) {
    ImportHeader header = HeaderOf(*source, "x");
    if (!nan) header.checksum = "sha256:00";
    auto whole = begin(header);
    ASSERT_NE(whole, nullptr);
    for (size_t i = 0; i < source->tensors.size(); ++i) {
      std::string bytes(Bytes(source->tensors[i].value));
      if (nan && i == 0) {
        const float value = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(bytes.data(), &value, sizeof value);
      }
      ASSERT_TRUE(whole->Append(static_cast<int64_t>(i), 0, bytes).ok());
    }
    auto finished = whole->Finish();
    EXPECT_EQ(finished.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(message(finished.status()), nan ? "NaN" : "nothing was stored")) << finished.status();
  }
  EXPECT_EQ(registry_->Get("x").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SetOperationsTest, AnalysisReadsAnLstmAsOneAndNamedTensorsAsAChain) {
  AnalyzeOptions options;
  options.probe.samples = 16;
  options.probe.steps = 3;
  auto lstm = AnalyzeSpec(Spec(2), core::CreateLimits(), options);
  ASSERT_TRUE(lstm.ok()) << lstm.status();
  EXPECT_EQ(lstm->lstm_layers.size(), 1u);
  EXPECT_TRUE(lstm->chain_layers.empty());

  options.weight_storage_error = true;
  auto errors = AnalyzeSpec(Spec(2), core::CreateLimits(), options);
  ASSERT_TRUE(errors.ok()) << errors.status();
  ASSERT_EQ(errors->storage_errors.size(), 2u);  // bfloat16 and int8
  EXPECT_EQ(errors->storage_errors[0].storage, core::WeightStorage::kBFloat16);

  options.tensors = {"w_0"};
  auto chained = AnalyzeSpec(Spec(2), core::CreateLimits(), options);
  EXPECT_EQ(chained.status().code(), absl::StatusCode::kInvalidArgument)
      << chained.status();  // storage error: LSTMs only
  options.weight_storage_error = false;
  chained = AnalyzeSpec(Spec(2), core::CreateLimits(), options);
  ASSERT_TRUE(chained.ok()) << chained.status();
  ASSERT_EQ(chained->chain_layers.size(), 1u);
  EXPECT_EQ(chained->chain_layers[0].name, "w_0");
  EXPECT_EQ(chained->chain_layers[0].fan_in * chained->chain_layers[0].fan_out, (4 + 8) * 4 * 8);
  options.tensors = {"nope"};
  EXPECT_TRUE(absl::StrContains(AnalyzeSpec(Spec(2), core::CreateLimits(), options).status().message(), "no 'nope'"));

  options.tensors.clear();
  options.probe.samples = int64_t{1} << 20;  // the cost bound, before any tensor is made
  options.probe.steps = 100000;
  EXPECT_EQ(AnalyzeSpec(Spec(2), core::CreateLimits(), options).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lstmserve::server
