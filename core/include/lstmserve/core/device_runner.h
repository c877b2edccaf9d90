// Runs a stacked LSTM on its set's device for a caller that holds host (CPU) tensors, as the
// server's batch workers do.
//
// On a CUDA device the runner owns one stream per GPU (from LibTorch's stream pool): it
// stages the inputs and states in pinned host memory, copies them to the device
// asynchronously on that stream, runs the LSTM there, copies the results back into pinned
// memory and waits for that stream alone. Runners on different threads thus use different
// streams, and one's copies overlap another's compute. On the CPU it calls Run directly.
#pragma once

#include <memory>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

#include "lstmserve/core/stacked_lstm.h"

namespace lstmserve::core {

// One per thread; not thread-safe.
class DeviceRunner {
 public:
  DeviceRunner();
  ~DeviceRunner();
  DeviceRunner(const DeviceRunner&) = delete;
  DeviceRunner& operator=(const DeviceRunner&) = delete;

  // `inputs` [T, B, I] and `initial` on the CPU, in the set's dtype (see
  // StackedLstm::CheckRunShapes); the results are on the CPU.
  absl::StatusOr<SequenceResult> Run(const StackedLstm& lstm, const at::Tensor& inputs, const LstmState& initial,
                                     bool want_outputs, LstmPath path = LstmPath::kAuto);

 private:
  struct Streams;
  std::unique_ptr<Streams> streams_;
};

}  // namespace lstmserve::core
