// libFuzzer: the safetensors reader, which reads the store's files from disk. Properties:
// no crash or sanitizer finding on any bytes; a file it accepts encodes back to bytes that
// decode to the same set, bit for bit (same checksum, names, shapes; NaN payloads too,
// which the reader keeps: refusing non-finite values is Import's policy, not the format's).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <ATen/ATen.h>

#include "lstmserve/core/store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto decoded = lstmserve::core::DecodeSafetensors(bytes);
  if (!decoded.ok()) return 0;
  auto encoded = lstmserve::core::EncodeSafetensors(*decoded);
  if (!encoded.ok()) return 0;  // e.g. an id the store would refuse to write
  auto again = lstmserve::core::DecodeSafetensors(*encoded);
  if (!again.ok()) std::abort();
  const auto& a = decoded->set.tensors;
  const auto& b = again->set.tensors;
  if (a.size() != b.size()) std::abort();
  for (size_t i = 0; i < a.size(); ++i) {
    // Bitwise: NaN != NaN as floats.
    const auto bits = [](const at::Tensor& t) { return t.contiguous().view({-1}).view(at::kByte); };
    if (a[i].name != b[i].name || a[i].value.sizes() != b[i].value.sizes() ||
        a[i].value.scalar_type() != b[i].value.scalar_type() || !bits(a[i].value).equal(bits(b[i].value))) {
      std::abort();
    }
  }
  if (lstmserve::core::ComputeChecksum(decoded->set) != lstmserve::core::ComputeChecksum(again->set)) std::abort();
  return 0;
}
