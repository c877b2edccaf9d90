#include "lstmserve/core/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

#include "lstmserve/core/status.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace lstmserve::core {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr absl::string_view kSuffix = ".safetensors";
constexpr uint64_t kMaxHeaderBytes = 100 << 20;
constexpr auto kStaleTempAge = std::chrono::minutes(1);

absl::string_view SafetensorsDtype(DType d) {
  switch (d) {
    case DType::kFloat32: return "F32";
    case DType::kFloat16: return "F16";
    case DType::kBFloat16: return "BF16";
    case DType::kInt8: return "I8";
  }
  return "F32";
}

absl::StatusOr<DType> FromSafetensorsDtype(absl::string_view s) {
  if (s == "F32") return DType::kFloat32;
  if (s == "F16") return DType::kFloat16;
  if (s == "BF16") return DType::kBFloat16;
  if (s == "I8") return DType::kInt8;
  return absl::DataLossError(absl::StrCat("unsupported safetensors dtype '", s, "' (F32, F16, BF16, I8)"));
}

// A failed file operation: the code and message name the condition for the client; the
// operation and the path stay in the detail, for the server's log.
absl::Status ErrnoStatus(absl::string_view what, const std::string& path, int err) {
  const std::string detail = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  const std::string reason = std::strerror(err);
  absl::Status status;
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      status = absl::ResourceExhaustedError(
          absl::StrCat("the parameter store is full (", reason, "); free space or delete sets, then retry"));
      break;
    case EROFS:
    case EACCES:
    case EPERM:
      status = absl::FailedPreconditionError(absl::StrCat(
          "the parameter store is read-only or not writable by the server (", reason,
          "); sets can be read, but nothing can be created, imported or deleted until an operator fixes it"));
      break;
    case ENOENT:
      status = absl::NotFoundError(absl::StrCat("a file of the parameter store is missing (", reason, ")"));
      break;
    case EEXIST:
      status = absl::AlreadyExistsError(absl::StrCat("a file of the parameter store exists (", reason, ")"));
      break;
    default:
      status = absl::UnavailableError(
          absl::StrCat("the parameter store failed (", reason, "); retry, or use another replica"));
  }
  return WithServerDetail(std::move(status), detail);
}

absl::Status WriteAll(int fd, const std::string& path, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : ErrnoStatus("fsync", dir, err);
}

// A digest as lower-case hex digits.
std::string Hex(const unsigned char* digest, unsigned int length) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

std::string HexSha256(absl::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  return Hex(digest, length);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus("open", path, errno);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return WithServerDetail(absl::DataLossError("a file of the parameter store could not be read"), path);
  return bytes;
}

}  // namespace

absl::Status ValidateSetId(absl::string_view id) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter_set_id '", ClientText(id), "' ", why,
                     "; ids are 1 to 63 characters of [a-z0-9._-], starting with [a-z0-9]"));
  };
  if (id.empty()) return bad("is empty");
  if (id.size() > 63) return bad("is too long");
  const char first = id.front();
  if (!((first >= 'a' && first <= 'z') || (first >= '0' && first <= '9'))) {
    return bad("does not start with a lowercase letter or digit");
  }
  for (char ch : id) {
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-')) {
      return bad("has a character outside [a-z0-9._-]");
    }
  }
  if (absl::EndsWith(id, ".tmp") || absl::EndsWith(id, ".corrupt")) return bad("ends in a reserved suffix");
  return absl::OkStatus();
}

std::string ComputeChecksum(const ParameterSet& set) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  const char zero = 0;
  for (const auto& t : set.tensors) {
    const at::Tensor cpu = t.value.contiguous().cpu();
    const std::string dtype(DTypeName(FromScalarType(cpu.scalar_type()).value_or(DType::kFloat32)));
    const std::string shape = absl::StrJoin(cpu.sizes(), ",");
    EVP_DigestUpdate(ctx, t.name.data(), t.name.size());
    EVP_DigestUpdate(ctx, &zero, 1);
    EVP_DigestUpdate(ctx, dtype.data(), dtype.size());
    EVP_DigestUpdate(ctx, &zero, 1);
    EVP_DigestUpdate(ctx, shape.data(), shape.size());
    EVP_DigestUpdate(ctx, &zero, 1);
    EVP_DigestUpdate(ctx, cpu.data_ptr(), cpu.nbytes());
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  return "sha256:" + Hex(digest, length);
}

absl::StatusOr<std::string> EncodeSafetensors(const StoredSet& stored) {
  return GuardTorch("encode safetensors", [&]() -> absl::StatusOr<std::string> {
    Json header = Json::object();
    header["__metadata__"] = {{"format", "pt"},
                              {"lstmserve.id", stored.id},
                              {"lstmserve.origin", stored.origin},
                              {"lstmserve.create_time", std::to_string(stored.create_time_micros)},
                              {"lstmserve.checksum", stored.checksum},
                              {"lstmserve.spec", stored.spec}};
    if (stored.set.weight_storage != WeightStorage::kDType) {
      header["__metadata__"]["lstmserve.weight_storage"] = std::string(WeightStorageName(stored.set.weight_storage));
    }
    std::vector<at::Tensor> cpu;
    int64_t offset = 0;
    for (const auto& t : stored.set.tensors) {
      cpu.push_back(t.value.contiguous().cpu());
      LSTMSERVE_ASSIGN_OR_RETURN(DType dtype, FromScalarType(cpu.back().scalar_type()));
      const int64_t bytes = static_cast<int64_t>(cpu.back().nbytes());
      header[t.name] = {{"dtype", SafetensorsDtype(dtype)},
                        {"shape", cpu.back().sizes().vec()},
                        {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    std::string json = header.dump();
    json.append((8 - json.size() % 8) % 8, ' ');  // data starts 8-byte aligned
    std::string out;
    out.reserve(8 + json.size() + static_cast<size_t>(offset));
    const uint64_t n = json.size();
    out.append(reinterpret_cast<const char*>(&n), 8);
    out += json;
    for (const auto& t : cpu) out.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
    return out;
  });
}

namespace {

// A JSON array of whole numbers that fit int64. nlohmann converts a float (1e81) or a large
// unsigned number with a plain cast, which is undefined past the target's range (found by
// fuzz_safetensors under UBSan), so the types are checked first.
absl::StatusOr<std::vector<int64_t>> WholeNumbers(const Json& j, const std::string& tensor, const char* field) {
  const auto bad = [&] {
    return absl::DataLossError(absl::StrCat("safetensors: tensor '", tensor, "': ", field,
                                            " must be an array of whole numbers up to 2^63 - 1"));
  };
  if (!j.is_array()) return bad();
  std::vector<int64_t> out;
  for (const Json& v : j) {
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return bad();
      out.push_back(static_cast<int64_t>(u));
    } else if (v.is_number_integer()) {
      out.push_back(v.get<int64_t>());
    } else {
      return bad();
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<StoredSet> DecodeSafetensors(absl::string_view bytes) {
  if (bytes.size() < 8) return absl::DataLossError("safetensors: shorter than its 8-byte header length");
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  if (header_size > kMaxHeaderBytes || header_size > bytes.size() - 8) {
    return absl::DataLossError(
        absl::StrCat("safetensors: header length ", header_size, " does not fit the file of ", bytes.size(), " bytes"));
  }
  Json header;
  try {
    header = Json::parse(bytes.substr(8, header_size));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("safetensors: header is not JSON: ", e.what()));
  }
  if (!header.is_object()) return absl::DataLossError("safetensors: header is not a JSON object");
  const absl::string_view data = bytes.substr(8 + header_size);

  StoredSet stored;
  std::string weight_storage;
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        const Json& m = it.value();
        if (!m.is_object()) return absl::DataLossError("safetensors: __metadata__ is not an object");
        auto text = [&](const char* key) {
          return m.contains(key) && m[key].is_string() ? m[key].get<std::string>() : std::string();
        };
        stored.id = text("lstmserve.id");
        stored.origin = text("lstmserve.origin");
        stored.checksum = text("lstmserve.checksum");
        stored.spec = text("lstmserve.spec");
        (void)absl::SimpleAtoi(text("lstmserve.create_time"), &stored.create_time_micros);
        weight_storage = text("lstmserve.weight_storage");
        continue;
      }
      const Json& t = it.value();
      if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets")) {
        return absl::DataLossError(
            absl::StrCat("safetensors: tensor '", it.key(), "' lacks dtype, shape or data_offsets"));
      }
      LSTMSERVE_RETURN_IF_ERROR(ValidateTensorName(it.key()));
      LSTMSERVE_ASSIGN_OR_RETURN(DType dtype, FromSafetensorsDtype(t["dtype"].get<std::string>()));
      LSTMSERVE_ASSIGN_OR_RETURN(std::vector<int64_t> shape, WholeNumbers(t["shape"], it.key(), "shape"));
      LSTMSERVE_ASSIGN_OR_RETURN(std::vector<int64_t> offsets,
                                 WholeNumbers(t["data_offsets"], it.key(), "data_offsets"));
      if (offsets.size() != 2 || offsets[0] < 0 || offsets[1] < 0) {
        return absl::DataLossError("safetensors: data_offsets needs 2 numbers >= 0");
      }
      Entry e{it.key(), dtype, std::move(shape), static_cast<uint64_t>(offsets[0]), static_cast<uint64_t>(offsets[1])};
      entries.push_back(std::move(e));
    }
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("safetensors: malformed header: ", e.what()));
  }
  if (entries.empty()) return absl::DataLossError("safetensors: no tensors");
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  uint64_t expected_begin = 0;
  return GuardTorch("decode safetensors", [&]() -> absl::StatusOr<StoredSet> {
    for (const Entry& e : entries) {
      if (e.shape.empty() || e.shape.size() > 8) {
        return absl::DataLossError(absl::StrCat("safetensors: tensor '", e.name, "' has rank ", e.shape.size()));
      }
      int64_t bytes = DTypeSize(e.dtype);
      for (int64_t s : e.shape) {
        if (s < 1 || __builtin_mul_overflow(bytes, s, &bytes)) {
          return absl::DataLossError(absl::StrCat("safetensors: tensor '", e.name, "' has a bad shape"));
        }
      }
      if (e.begin != expected_begin || e.end < e.begin || e.end - e.begin != static_cast<uint64_t>(bytes) ||
          e.end > data.size()) {
        return absl::DataLossError(absl::StrCat("safetensors: tensor '", e.name, "' has data_offsets [", e.begin, ", ",
                                                e.end, ") that do not tile the ", data.size(), "-byte data"));
      }
      at::Tensor value = at::empty(e.shape, at::TensorOptions().dtype(ToScalarType(e.dtype)));
      std::memcpy(value.data_ptr(), data.data() + e.begin, static_cast<size_t>(bytes));
      if (stored.set.tensors.empty()) stored.set.dtype = e.dtype;
      stored.set.byte_size += bytes;
      stored.set.tensors.push_back({e.name, std::move(value)});
      expected_begin = e.end;
    }
    if (expected_begin != data.size()) {
      return absl::DataLossError(
          absl::StrCat("safetensors: ", data.size() - expected_begin, " trailing bytes after the last tensor"));
    }
    // The dtypes against the weight storage: one dtype for the whole set, or the layout of
    // reduced weights (whose set dtype is float32).
    auto storage = ParseWeightStorage(weight_storage);
    if (!storage.ok())
      return absl::DataLossError(absl::StrCat("safetensors: lstmserve.weight_storage: ", storage.status().message()));
    stored.set.weight_storage = *storage;
    if (*storage != WeightStorage::kDType) stored.set.dtype = DType::kFloat32;
    if (absl::Status layout = ValidateWeightStorage(stored.set); !layout.ok()) {
      return absl::DataLossError(absl::StrCat("safetensors: ", layout.message()));
    }
    if (!stored.checksum.empty()) {
      const std::string actual = ComputeChecksum(stored.set);
      if (actual != stored.checksum) {
        return absl::DataLossError(
            absl::StrCat("checksum mismatch: file says ", stored.checksum, ", data hashes to ", actual));
      }
    }
    return std::move(stored);
  });
}

absl::StatusOr<std::unique_ptr<ParameterStore>> ParameterStore::Open(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create store folder ", dir, ": ", ec.message()));
  if (::access(dir.c_str(), W_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("store folder ", dir, " is not writable: ", std::strerror(errno)));
  }
  // Temporary files older than a minute were left by a crash (newer ones may belong to
  // another server sharing the folder).
  const auto now = fs::file_time_type::clock::now();
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, ".") && absl::EndsWith(name, ".tmp") &&
        now - entry.last_write_time(ec) > kStaleTempAge) {
      fs::remove(entry.path(), ec);
    }
  }
  return std::unique_ptr<ParameterStore>(new ParameterStore(dir));
}

absl::StatusOr<std::unique_ptr<ParameterStore>> ParameterStore::OpenModelDir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || ::access(dir.c_str(), R_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("model directory ", dir, " is not a readable folder"));
  }
  std::unique_ptr<ParameterStore> store(new ParameterStore(dir));
  store->read_only_ = true;
  const std::string sums_path = absl::StrCat(dir, "/SHA256SUMS");
  if (fs::exists(sums_path, ec)) {
    auto sums = ReadFile(sums_path);
    if (!sums.ok()) return absl::FailedPreconditionError(absl::StrCat("cannot read ", sums_path));
    int number = 0;
    for (absl::string_view line : absl::StrSplit(*sums, '\n')) {
      ++number;
      line = absl::StripAsciiWhitespace(line);
      if (line.empty()) continue;
      // "<64 hex digits>  <name>", or " *<name>" for binary mode.
      const size_t space = line.find(' ');
      absl::string_view digest = line.substr(0, space);
      absl::string_view name =
          space == absl::string_view::npos ? "" : absl::StripLeadingAsciiWhitespace(line.substr(space));
      absl::ConsumePrefix(&name, "*");
      absl::ConsumePrefix(&name, "./");
      if (digest.size() != 64 || digest.find_first_not_of("0123456789abcdefABCDEF") != absl::string_view::npos ||
          name.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat(sums_path, " line ", number, " is not \"<sha256 hex>  <file>\" as sha256sum writes it"));
      }
      store->sha256sums_[std::string(name)] = absl::AsciiStrToLower(digest);
    }
  }
  return store;
}

absl::Status ParameterStore::CheckModelFile(absl::string_view name, absl::string_view bytes) const {
  if (sha256sums_.empty()) return absl::OkStatus();
  auto it = sha256sums_.find(std::string(name));
  if (it == sha256sums_.end()) {
    return absl::DataLossError(absl::StrCat(name, " is not listed in the model directory's SHA256SUMS"));
  }
  const std::string actual = HexSha256(bytes);
  if (actual != it->second) {
    return absl::DataLossError(
        absl::StrCat(name, ": SHA-256 ", actual, " does not match SHA256SUMS (", it->second, ")"));
  }
  return absl::OkStatus();
}

absl::Status ParameterStore::AdoptModelSet(absl::string_view id, StoredSet* stored) const {
  if (stored->id.empty()) {
    stored->id = std::string(id);
    stored->origin = "model_dir";
    stored->checksum = ComputeChecksum(stored->set);
    stored->create_time_micros = stored->version.mtime_ns / 1000;
  }
  const std::string spec_name = absl::StrCat(id, ".json");
  const std::string spec_path = absl::StrCat(dir_, "/", spec_name);
  std::error_code ec;
  if (!fs::exists(spec_path, ec)) return absl::OkStatus();
  LSTMSERVE_ASSIGN_OR_RETURN(std::string text, ReadFile(spec_path));
  LSTMSERVE_RETURN_IF_ERROR(CheckModelFile(spec_name, text));
  const Json spec = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  const auto number = [&](const char* key) -> int64_t {
    return spec.is_object() && spec.contains(key) && spec[key].is_number_integer() ? spec[key].get<int64_t>() : -1;
  };
  LstmTemplate lstm;
  lstm.num_layers = number("num_layers");
  lstm.input_size = number("input_size");
  lstm.hidden_size = number("hidden_size");
  if (spec.is_object() && spec.contains("bias")) {
    if (!spec["bias"].is_boolean()) return absl::DataLossError(absl::StrCat(spec_name, ": \"bias\" must be a boolean"));
    lstm.bias = spec["bias"].get<bool>();
  }
  if (lstm.num_layers < 1 || lstm.input_size < 1 || lstm.hidden_size < 1) {
    return absl::DataLossError(
        absl::StrCat(spec_name,
                     " must be {\"num_layers\": L, \"input_size\": I, \"hidden_size\": H, \"bias\": true|false} "
                     "with L, I, H >= 1"));
  }
  // The tensors the LSTM layout names, and nothing else: w_<l> [in_l + H, 4H] (in_0 = I, then
  // H), with bias b_<l> [4H]; int8 storage adds w_<l>.scale.
  size_t expected = 0;
  for (int64_t l = 0; l < lstm.num_layers; ++l) {
    const int64_t in = (l == 0 ? lstm.input_size : lstm.hidden_size) + lstm.hidden_size;
    const at::Tensor* w = stored->set.Find(LstmWeightName(l));
    if (w == nullptr || w->dim() != 2 || w->size(0) != in || w->size(1) != 4 * lstm.hidden_size) {
      return absl::DataLossError(absl::StrCat(id, ".safetensors does not hold the LSTM ", spec_name, " gives: ",
                                              LstmWeightName(l), " must be [", in, ", ", 4 * lstm.hidden_size, "]"));
    }
    ++expected;
    if (lstm.bias) {
      const at::Tensor* b = stored->set.Find(LstmBiasName(l));
      if (b == nullptr || b->dim() != 1 || b->size(0) != 4 * lstm.hidden_size) {
        return absl::DataLossError(absl::StrCat(id, ".safetensors does not hold the LSTM ", spec_name,
                                                " gives: ", LstmBiasName(l), " must be [", 4 * lstm.hidden_size, "]"));
      }
      ++expected;
    }
    if (stored->set.weight_storage == WeightStorage::kInt8) ++expected;
  }
  if (stored->set.tensors.size() != expected) {
    return absl::DataLossError(absl::StrCat(id, ".safetensors holds ", stored->set.tensors.size(),
                                            " tensors; the LSTM ", spec_name, " gives has ", expected));
  }
  stored->set.lstm = lstm;
  return absl::OkStatus();
}

std::string ParameterStore::PathOf(absl::string_view id) const { return absl::StrCat(dir_, "/", id, kSuffix); }

absl::StatusOr<FileVersion> ParameterStore::Version(absl::string_view id) const {
  LSTMSERVE_RETURN_IF_ERROR(ValidateSetId(id));
  const std::string path = PathOf(id);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("parameter set '", id, "' not found"));
    return ErrnoStatus("stat", path, errno);
  }
  FileVersion version;
  version.inode = static_cast<uint64_t>(st.st_ino);
  version.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  version.size = static_cast<int64_t>(st.st_size);
  return version;
}

std::vector<std::string> ParameterStore::ListIds(std::string* problem) const {
  std::vector<std::string> ids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (!absl::EndsWith(name, kSuffix) || absl::StartsWith(name, ".")) continue;
    ids.push_back(name.substr(0, name.size() - kSuffix.size()));
  }
  if (ec && problem != nullptr) *problem = absl::StrCat("cannot list ", dir_, ": ", ec.message());
  std::sort(ids.begin(), ids.end());
  return ids;
}

bool ParameterStore::Contains(absl::string_view id) const {
  struct stat st;
  return ValidateSetId(id).ok() && ::stat(PathOf(id).c_str(), &st) == 0;
}

namespace {

absl::Status ReadOnly(const std::string& dir) {
  return absl::FailedPreconditionError(absl::StrCat("the server serves the model directory ", dir,
                                                    " read only (--model_dir): sets cannot be created, imported or "
                                                    "deleted"));
}

}  // namespace

absl::Status ParameterStore::Save(const StoredSet& stored) {
  if (read_only_) return ReadOnly(dir_);
  LSTMSERVE_RETURN_IF_ERROR(ValidateSetId(stored.id));
  LSTMSERVE_ASSIGN_OR_RETURN(std::string bytes, EncodeSafetensors(stored));
  static std::atomic<uint64_t> counter{0};
  const std::string path = PathOf(stored.id);
  const std::string tmp = absl::StrCat(dir_, "/.", stored.id, ".", ::getpid(), ".", counter++, ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create", tmp, errno);
  absl::Status status = WriteAll(fd, tmp, bytes.data(), bytes.size());
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoStatus("fsync", tmp, errno);
  if (::close(fd) != 0 && status.ok()) status = ErrnoStatus("close", tmp, errno);
  // link() publishes the complete file under its name and fails if the name exists, so two
  // servers sharing the folder cannot overwrite each other's set.
  if (status.ok() && ::link(tmp.c_str(), path.c_str()) != 0) {
    status = errno == EEXIST ? absl::AlreadyExistsError(absl::StrCat("parameter set '", stored.id, "' already exists"))
                             : ErrnoStatus("link", path, errno);
  }
  ::unlink(tmp.c_str());
  if (!status.ok()) return status;
  return SyncDir(dir_);
}

absl::Status ParameterStore::Remove(absl::string_view id) {
  if (read_only_) return ReadOnly(dir_);
  LSTMSERVE_RETURN_IF_ERROR(ValidateSetId(id));
  const std::string path = PathOf(id);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("parameter set '", id, "' not found"));
    return ErrnoStatus("unlink", path, errno);
  }
  return SyncDir(dir_);
}

absl::StatusOr<StoredSet> ParameterStore::Load(absl::string_view id) const {
  LSTMSERVE_RETURN_IF_ERROR(ValidateSetId(id));
  // The version before the read: if the file is replaced meanwhile, the next Version()
  // differs from it and the caller reads again.
  auto version = Version(id);
  auto bytes = ReadFile(PathOf(id));
  if (!bytes.ok()) {
    if (absl::IsNotFound(bytes.status()))
      return absl::NotFoundError(absl::StrCat("parameter set '", id, "' not found"));
    return bytes.status();
  }
  if (read_only_) LSTMSERVE_RETURN_IF_ERROR(CheckModelFile(absl::StrCat(id, kSuffix), *bytes));
  LSTMSERVE_ASSIGN_OR_RETURN(StoredSet stored, DecodeSafetensors(*bytes));
  if (version.ok()) stored.version = *version;
  if (read_only_) LSTMSERVE_RETURN_IF_ERROR(AdoptModelSet(id, &stored));
  if (stored.id != id) {
    return WithServerDetail(
        absl::DataLossError(absl::StrCat("the stored file of set '", id, "' holds set '", ClientText(stored.id), "'")),
        PathOf(id));
  }
  return stored;
}

ParameterStore::LoadReport ParameterStore::LoadAll() {
  LoadReport report;
  std::string problem;
  const std::vector<std::string> ids = ListIds(&problem);
  if (!problem.empty()) report.problems.push_back(problem);
  std::error_code ec;
  for (const std::string& id : ids) {
    absl::StatusOr<StoredSet> stored =
        ValidateSetId(id).ok() ? Load(id)
                               : absl::StatusOr<StoredSet>(absl::DataLossError("file name is not a valid set id"));
    if (stored.ok()) {
      report.sets.push_back(*std::move(stored));
      continue;
    }
    const std::string path = PathOf(id);
    if (read_only_) {  // a model directory is never written: the server refuses to start
      report.problems.push_back(absl::StrCat(path, ": ", MessageForLog(stored.status())));
      continue;
    }
    const std::string aside = path + ".corrupt";
    fs::rename(path, aside, ec);
    report.problems.push_back(absl::StrCat(path, ": ", MessageForLog(stored.status()), "; moved aside to ",
                                           ec ? "(rename failed: " + ec.message() + ")" : aside));
  }
  return report;
}

}  // namespace lstmserve::core
