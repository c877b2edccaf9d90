// A real engine over a temporary store holding one LSTM set "m": what the tests of the parts
// that sit on the engine (oip::OpenInference, the HTTP handler) start, without a socket.
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/server/engine/batcher.h"
#include "lstmserve/server/engine/inference_engine.h"
#include "lstmserve/server/engine/model_statistics.h"
#include "lstmserve/server/engine/sequence_store.h"
#include "lstmserve/server/engine/set_registry.h"
#include "lstmserve/server/oip/open_inference.h"

namespace lstmserve::server {

class EngineWithOneSet {
 protected:
  // The set "m" of `lstm`'s shape (seed 5) in a new store; the batcher with `batching`; the
  // protocol's logic not ready while `*draining` (optional).
  // `max_total_bytes`: the registry's memory budget for sets.
  void StartEngine(const core::LstmTemplate& lstm, const BatchOptions& batching,
                   const std::atomic<bool>* draining = nullptr, int64_t max_total_bytes = int64_t{1} << 30) {
    dir_ = std::filesystem::temp_directory_path() / ("lstmserve-engine-" + std::to_string(std::random_device()()));
    auto store = core::ParameterStore::Open(dir_.string());
    ASSERT_TRUE(store.ok()) << store.status();
    registry_ = std::make_unique<SetRegistry>(*std::move(store), c10::Device(c10::kCPU), max_total_bytes);
    core::ParameterSetSpec spec;
    spec.lstm = lstm;
    spec.seed = 5;
    auto set = core::CreateParameterSet(spec, core::CreateLimits());
    ASSERT_TRUE(set.ok()) << set.status();
    core::StoredSet stored;
    stored.id = "m";
    stored.set = *std::move(set);
    ASSERT_TRUE(registry_->Add(std::move(stored)).ok());
    statistics_ = std::make_unique<ModelStatistics>();
    batcher_ = std::make_unique<Batcher>(batching, nullptr, nullptr, statistics_.get());
    sequences_ = std::make_unique<SequenceStore>(16, absl::Minutes(1));
    engine_ = std::make_unique<InferenceEngine>(registry_.get(), batcher_.get(), sequences_.get(), 1 << 20,
                                                statistics_.get());
    oip_ = std::make_unique<oip::OpenInference>(engine_.get(), absl::Minutes(1), draining);
  }
  void StopEngine() {
    oip_.reset();
    engine_.reset();
    batcher_.reset();
    sequences_.reset();
    statistics_.reset();
    registry_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::filesystem::path dir_;
  std::unique_ptr<SetRegistry> registry_;
  std::unique_ptr<ModelStatistics> statistics_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<SequenceStore> sequences_;
  std::unique_ptr<InferenceEngine> engine_;
  std::unique_ptr<oip::OpenInference> oip_;
};

}  // namespace lstmserve::server
