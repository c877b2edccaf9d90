#include "reference_data.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include <torch/csrc/jit/serialization/pickle.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"

namespace lstmserve::testing {

absl::StatusOr<c10::IValue> LoadReference() {
  std::string path;
  if (const char* env = std::getenv("LSTMSERVE_REFERENCE_FILE"); env != nullptr && *env) {
    path = env;
  } else {
    char tmpl[] = "/tmp/lstmserve-reference-XXXXXX";
    const int fd = mkstemp(tmpl);
    if (fd < 0) return absl::InternalError("mkstemp failed");
    close(fd);
    path = tmpl;
    const std::string cmd = absl::StrCat(LSTMSERVE_PYTHON, " ", LSTMSERVE_MAKE_REFERENCE, " --reference-dir '",
                                         LSTMSERVE_REFERENCE_DIR, "' --out '", path, "'");
    if (std::system(cmd.c_str()) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("could not make reference values with: ", cmd,
                       "\n(needs /usr/bin/python3 with python3-torch, and ../shared/reference/common_ops.py;"
                       " or set LSTMSERVE_REFERENCE_FILE)"));
    }
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!std::getenv("LSTMSERVE_REFERENCE_FILE")) std::remove(path.c_str());
  return core::GuardTorch("pickle_load",
                          [&]() -> absl::StatusOr<c10::IValue> { return torch::jit::pickle_load(bytes); });
}

bool Has(const c10::IValue& dict, const std::string& key) {
  for (const auto& pair : Items(dict)) {
    if (Items(pair).at(0).toStringRef() == key) return true;
  }
  return false;
}

c10::IValue Field(const c10::IValue& dict, const std::string& key) {
  for (const auto& pair : Items(dict)) {
    const auto kv = Items(pair);
    if (kv.at(0).toStringRef() == key) return kv.at(1);
  }
  throw std::runtime_error("reference file: missing key " + key);
}

double AsDouble(const c10::IValue& v) {
  if (v.isDouble()) return v.toDouble();
  if (v.isInt()) return static_cast<double>(v.toInt());
  if (v.isBool()) return v.toBool() ? 1.0 : 0.0;
  throw std::runtime_error("reference file: expected a number");
}

std::vector<c10::IValue> Items(const c10::IValue& v) {
  if (v.isTuple()) {
    const auto& e = v.toTupleRef().elements();
    return std::vector<c10::IValue>(e.begin(), e.end());  // not {}: IValue(bool) takes pointers
  }
  if (v.isList()) return v.toList().vec();
  throw std::runtime_error(std::string("reference file: expected a tuple, got ") + v.tagKind());
}

std::vector<int64_t> Ints(const c10::IValue& v) {
  std::vector<int64_t> out;
  for (const auto& item : Items(v)) out.push_back(item.toInt());
  return out;
}

uint64_t Seed(const c10::IValue& v) {
  uint64_t seed = 0;
  if (!absl::SimpleAtoi(v.toStringRef(), &seed)) throw std::runtime_error("reference file: bad seed");
  return seed;
}

absl::StatusOr<core::Initializer> InitializerFromTorchCall(const std::string& name, const c10::IValue& kwargs) {
  LSTMSERVE_ASSIGN_OR_RETURN(core::InitKind kind, core::ParseInitKind(name));
  core::Initializer init;
  switch (kind) {
    case core::InitKind::kUniform: init = core::Initializer::Uniform(); break;
    case core::InitKind::kNormal: init = core::Initializer::Normal(); break;
    case core::InitKind::kConstant: init = core::Initializer::Constant(0); break;
    case core::InitKind::kZeros: init = core::Initializer::Zeros(); break;
    case core::InitKind::kOnes: init = core::Initializer::Ones(); break;
    case core::InitKind::kXavierUniform: init = core::Initializer::XavierUniform(); break;
    case core::InitKind::kXavierNormal: init = core::Initializer::XavierNormal(); break;
    case core::InitKind::kKaimingUniform: init = core::Initializer::KaimingUniform(); break;
    case core::InitKind::kKaimingNormal: init = core::Initializer::KaimingNormal(); break;
    case core::InitKind::kOrthogonal: init = core::Initializer::Orthogonal(); break;
    case core::InitKind::kTruncNormal: init = core::Initializer::TruncNormal(); break;
    case core::InitKind::kEye: init = core::Initializer::Eye(); break;
    case core::InitKind::kDirac: init = core::Initializer::Dirac(); break;
    case core::InitKind::kSparse: init = core::Initializer::Sparse(0); break;
  }
  const bool kaiming = kind == core::InitKind::kKaimingUniform || kind == core::InitKind::kKaimingNormal;
  for (const auto& entry : Items(kwargs)) {
    const auto kv = Items(entry);
    const std::string key = kv.at(0).toStringRef();
    const c10::IValue& v = kv.at(1);
    if (key == "a") {
      (kaiming ? init.negative_slope : init.low) = AsDouble(v);
    } else if (key == "b") {
      init.high = AsDouble(v);
    } else if (key == "mean") {
      init.mean = AsDouble(v);
    } else if (key == "std") {
      init.std = AsDouble(v);
    } else if (key == "val") {
      init.value = AsDouble(v);
    } else if (key == "gain") {
      init.gain = AsDouble(v);
    } else if (key == "groups") {
      init.groups = v.toInt();
    } else if (key == "sparsity") {
      init.sparsity = AsDouble(v);
    } else if (key == "mode") {
      LSTMSERVE_ASSIGN_OR_RETURN(init.mode, core::ParseFanMode(v.toStringRef()));
    } else if (key == "nonlinearity") {
      LSTMSERVE_ASSIGN_OR_RETURN(init.nonlinearity, core::ParseNonlinearity(v.toStringRef()));
    } else {
      return absl::InvalidArgumentError("unknown torch keyword " + key);
    }
  }
  return init;
}

}  // namespace lstmserve::testing
