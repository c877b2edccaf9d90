// The registry's memory budget: a set counts its tensors and, once a call makes them, the
// layouts its kernels derive from them; past the budget the least recently used sets go.
#include "lstmserve/server/engine/set_registry.h"

#include <filesystem>
#include <random>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "lstmserve/core/parameter_set.h"

namespace lstmserve::server {
namespace {

class SetRegistryTest : public ::testing::Test {
 protected:
  void TearDown() override {
    registry_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void Open(int64_t max_total_bytes) {
    dir_ = std::filesystem::temp_directory_path() / ("lstmserve-registry-" + std::to_string(std::random_device()()));
    auto store = core::ParameterStore::Open(dir_.string());
    ASSERT_TRUE(store.ok()) << store.status();
    registry_ = std::make_unique<SetRegistry>(*std::move(store), c10::Device(c10::kCPU), max_total_bytes);
  }

  // An int8 set: every CPU derives a layout for it on the kBlas path (the packed int8 GEMM's
  // weights on x86-64-v3 and above, a float32 copy below).
  static core::StoredSet Int8Set(const std::string& id) {
    core::ParameterSetSpec spec;
    spec.lstm = core::LstmTemplate{2, 8, 32, true};
    spec.seed = 7;
    spec.weight_storage = core::WeightStorage::kInt8;
    auto set = core::CreateParameterSet(spec, core::CreateLimits());
    EXPECT_TRUE(set.ok()) << set.status();
    core::StoredSet stored;
    stored.id = id;
    stored.set = *std::move(set);
    return stored;
  }

  static void RunBlas(const SetEntry& entry) {
    ASSERT_TRUE(entry.lstm.has_value());
    auto result = entry.lstm->Run(at::ones({3, 8, 8}), {}, true, core::LstmPath::kBlas);
    ASSERT_TRUE(result.ok()) << result.status();
  }

  std::filesystem::path dir_;
  std::unique_ptr<SetRegistry> registry_;
};

TEST_F(SetRegistryTest, DerivedLayoutsCountAgainstTheBudgetAndMakeRoom) {
  // What one set's tensors and derived layout take, measured on a set outside any registry.
  const core::StoredSet probe = Int8Set("probe");
  const int64_t tensors = probe.set.byte_size;
  auto lstm = core::StackedLstm::FromParameterSet(probe.set);
  ASSERT_TRUE(lstm.ok()) << lstm.status();
  ASSERT_TRUE(lstm->Run(at::ones({3, 8, 8}), {}, true, core::LstmPath::kBlas).ok());
  const int64_t derived = lstm->DerivedBytes();
  ASSERT_GT(derived, 0);

  // Room for both sets' tensors and one derived layout, not two.
  Open(2 * tensors + derived);
  auto a = registry_->Add(Int8Set("a"));
  auto b = registry_->Add(Int8Set("b"));
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(registry_->total_bytes(), 2 * tensors);
  EXPECT_EQ(registry_->derived_bytes(), 0);

  // a's first kBlas call makes its layout: counted, and both sets still fit.
  RunBlas(**a);
  EXPECT_EQ(registry_->derived_bytes(), derived);
  EXPECT_EQ(registry_->total_bytes(), 2 * tensors + derived);
  EXPECT_EQ(registry_->count(), 2);
  RunBlas(**a);  // made once
  EXPECT_EQ(registry_->total_bytes(), 2 * tensors + derived);

  // b's layout does not fit beside a's: a, the least recently used, leaves memory.
  RunBlas(**b);
  EXPECT_EQ(registry_->count(), 1);
  EXPECT_EQ(registry_->total_bytes(), tensors + derived);
  EXPECT_EQ(registry_->derived_bytes(), derived);
  auto index = registry_->Index();
  ASSERT_EQ(index.size(), 2u);
  EXPECT_FALSE(index[0].held);  // a: its file stays
  EXPECT_TRUE(index[1].held);

  // a, used again, is read from its file, without its layout, and fits beside b.
  auto again = registry_->Get("a");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->get(), a->get());
  EXPECT_EQ(registry_->total_bytes(), 2 * tensors + derived);
  // The old entry of a, still held by a call, made its layout before it left: nothing more.
  RunBlas(**a);
  EXPECT_EQ(registry_->total_bytes(), 2 * tensors + derived);

  // Deleting a set takes its layout's bytes with it.
  ASSERT_TRUE(registry_->Delete("b").ok());
  EXPECT_EQ(registry_->total_bytes(), tensors);
  EXPECT_EQ(registry_->derived_bytes(), 0);
  RunBlas(**again);
  EXPECT_EQ(registry_->total_bytes(), tensors + derived);
  ASSERT_TRUE(registry_->Unload("a").ok());
  EXPECT_EQ(registry_->total_bytes(), 0);
  EXPECT_EQ(registry_->derived_bytes(), 0);

  // A call that still holds a set after it left memory makes its layout: the registry no
  // longer holds that entry, so the layout goes with the call and is not counted.
  auto c = registry_->Add(Int8Set("c"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(registry_->Unload("c").ok());
  RunBlas(**c);
  EXPECT_EQ((*c)->lstm->DerivedBytes(), derived);
  EXPECT_EQ(registry_->total_bytes(), 0);
  EXPECT_EQ(registry_->derived_bytes(), 0);
}

}  // namespace
}  // namespace lstmserve::server
