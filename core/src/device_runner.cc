#include "lstmserve/core/device_runner.h"

#include <map>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#ifdef LSTMSERVE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "absl/strings/str_cat.h"

#include "lstmserve/core/device.h"
#include "lstmserve/core/status.h"

namespace lstmserve::core {

struct DeviceRunner::Streams {
#ifdef LSTMSERVE_WITH_CUDA
  std::map<c10::DeviceIndex, c10::cuda::CUDAStream> by_device;
#endif
};

DeviceRunner::DeviceRunner() : streams_(std::make_unique<Streams>()) {}
DeviceRunner::~DeviceRunner() = default;

absl::StatusOr<SequenceResult> DeviceRunner::Run(const StackedLstm& lstm, const at::Tensor& inputs,
                                                 const LstmState& initial, bool want_outputs, LstmPath path) {
  const c10::Device device = lstm.device();
  if (inputs.device() == device) return lstm.Run(inputs, initial, want_outputs, path);
#ifdef LSTMSERVE_WITH_CUDA
  if (device.is_cuda() && inputs.device().is_cpu()) {
    return GuardTorch("device run", [&]() -> absl::StatusOr<SequenceResult> {
      c10::InferenceMode inference;
      const c10::cuda::CUDAGuard device_guard(device);
      auto found = streams_->by_device.find(device.index());
      if (found == streams_->by_device.end()) {
        found = streams_->by_device.emplace(device.index(), c10::cuda::getStreamFromPool(false, device.index())).first;
      }
      const c10::cuda::CUDAStream stream = found->second;
      const c10::cuda::CUDAStreamGuard stream_guard(stream);
      // Host -> pinned staging buffer -> device, asynchronously on this runner's stream.
      const auto to_device = [&](const at::Tensor& host) {
        at::Tensor pinned = at::empty(host.sizes(), host.options().pinned_memory(true));
        pinned.copy_(host);
        return pinned.to(device, /*non_blocking=*/true);
      };
      const auto to_host = [&](const at::Tensor& on_device) {
        at::Tensor pinned = at::empty(on_device.sizes(), on_device.options().device(at::kCPU).pinned_memory(true));
        pinned.copy_(on_device, /*non_blocking=*/true);
        return pinned;
      };
      LstmState state;
      for (const auto& c : initial.c) state.c.push_back(to_device(c));
      for (const auto& h : initial.h) state.h.push_back(to_device(h));
      LSTMSERVE_ASSIGN_OR_RETURN(SequenceResult result, lstm.Run(to_device(inputs), state, want_outputs, path));
      SequenceResult host;
      if (result.outputs.defined()) host.outputs = to_host(result.outputs);
      for (const auto& c : result.final_state.c) host.final_state.c.push_back(to_host(c));
      for (const auto& h : result.final_state.h) host.final_state.h.push_back(to_host(h));
      stream.synchronize();
      return host;
    });
  }
#endif
  return absl::InvalidArgumentError(absl::StrCat("inputs on ", DeviceName(inputs.device()), " for a set on ",
                                                 DeviceName(device), "; give host (CPU) tensors"));
}

}  // namespace lstmserve::core
