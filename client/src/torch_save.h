// A .pt file as PyTorch's torch.save(dict of tensors) writes it: a zip archive (LibTorch's
// own writer) holding a protocol-2 pickle of a dict of tensors, each rebuilt by
// torch._utils._rebuild_tensor_v2 from a typed storage whose bytes are a record of their own.
// Every global in it is one that torch.load's weights_only unpickler allows (the default
// since PyTorch 2.6), and PyTorch 1.13 and LibTorch's pickle_load read it too.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "lstmserve/core/parameter_set.h"

namespace lstmserve::client {

// INVALID_ARGUMENT for a dtype PyTorch has no storage class for.
absl::StatusOr<std::string> TorchSaveStateDict(const std::vector<core::NamedTensor>& tensors);

}  // namespace lstmserve::client
